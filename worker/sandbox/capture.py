"""Starting the launcher and reading what the job prints while it runs.

stdout and stderr are pipes read as the job writes them, keeping ``cap`` bytes
of each and counting the rest, so a job printing gigabytes costs the worker no
more memory than the cap. The launcher's report comes on a third pipe. A
launcher that has not reported by the job's timeout plus a grace period is told
to kill its tree.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from collections.abc import Callable

from worker.models import cap_text
from worker.sandbox.launcher import LaunchReport, LaunchSpec, launch, parse_report
from worker.sandbox.reaping import release

GRACE_SECONDS = 5.0
STRAYS_MARKER = "\n[sandrun: killed {count} process(es) the job left running]\n"


def _pump(streams: dict[int, bytearray], report_fd: int, cap: int, deadline: float
          ) -> tuple[bytes, dict[int, int], bool]:
    """Read stdout/stderr (keeping ``cap`` bytes each, counting the rest) and the report.

    Returns the report bytes, the bytes dropped per stream, and whether everything
    reached end-of-file before ``deadline``.
    """
    report = bytearray()
    dropped = dict.fromkeys(streams, 0)
    sel = selectors.DefaultSelector()
    for fd in (*streams, report_fd):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    open_fds = len(streams) + 1
    try:
        while open_fds and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                fd = int(key.fd)
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_fds -= 1
                elif fd == report_fd:
                    report += chunk
                else:
                    room = max(0, cap - len(streams[fd]))
                    streams[fd] += chunk[:room]
                    dropped[fd] += len(chunk) - min(room, len(chunk))
    finally:
        sel.close()
    return bytes(report), dropped, open_fds == 0


def _reap_launcher(pid: int, finished: bool) -> None:
    """Reap the launcher; one that outlived the grace period is told to kill its tree."""
    if not finished:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    release(pid, wait=not finished)


def execute(spec: Callable[[int, int], LaunchSpec], timeout: float, cap: int
            ) -> tuple[LaunchReport, str, bool, str, bool]:
    """Launch the job (``spec`` of its stdout and stderr pipes) and capture its output while
    it runs: the launcher's report, then stdout and stderr, each with whether it was cut."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid, report_fd = launch(spec(out_w, err_w))
    os.close(out_w)
    os.close(err_w)
    return collect(pid, (report_fd, out_r, err_r), timeout, cap)


def collect(pid: int, fds: tuple[int, int, int], timeout: float, cap: int
            ) -> tuple[LaunchReport, str, bool, str, bool]:
    """Capture a launched job's stdout and stderr until it ends (``fds``: the read ends
    of its report, stdout and stderr, all closed here), reap its launcher, and return
    what :func:`execute` returns."""
    report_fd, out_r, err_r = fds
    streams = {out_r: bytearray(), err_r: bytearray()}
    try:
        raw, dropped, finished = _pump(streams, report_fd, cap,
                                       time.monotonic() + timeout + GRACE_SECONDS)
    finally:
        for fd in (out_r, err_r, report_fd):
            os.close(fd)
    _reap_launcher(pid, finished)
    stdout, out_cut = cap_text(bytes(streams[out_r]), cap, dropped[out_r])
    stderr, err_cut = cap_text(bytes(streams[err_r]), cap, dropped[err_r])
    report = parse_report(raw)
    if report.strays:
        stderr += STRAYS_MARKER.format(count=report.strays)
    return report, stdout, out_cut, stderr, err_cut
