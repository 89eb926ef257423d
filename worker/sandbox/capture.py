"""Starting the launcher and reading what the job prints while it runs.

stdout and stderr are pipes read as the job writes them, keeping ``cap`` bytes
of each and counting the rest, so a job printing gigabytes costs the worker no
more memory than the cap. Each read takes what the pipe holds (up to 1 MiB) into
memory the process reuses (:mod:`worker.sandbox.arena`): one system call and no
allocation however fast the job prints. The launcher's report comes on a third
pipe, the job's progress reports (:mod:`worker.sandbox.progress`) on a fourth. What
the job prints and reports is also teed, as it arrives, to the live output of
:mod:`worker.sandbox.live` when the node asked for it. A launcher that has not
reported by the job's timeout plus a grace period is told to kill its tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import replace

from worker.models import cap_text
from worker.sandbox.arena import READ_BYTES, read_buffer
from worker.sandbox.launcher import LaunchReport, LaunchSpec, launch, parse_report
from worker.sandbox.live import Tee
from worker.sandbox.reaping import release

GRACE_SECONDS = 5.0
PIPE_BYTES = 1 << 20
PROGRESS_DRAIN_READS = 16  # reads of the progress pipe after the job ended (64 KiB each)
STRAYS_MARKER = "\n[sandrun: killed {count} process(es) the job left running]\n"


class _Live:
    """The live side of one job's capture: its progress pipe (read, and handed to the tee
    when there is one) and the tee its output goes to (:mod:`worker.sandbox.live`)."""

    def __init__(self, tee: Tee | None, progress_fd: int | None) -> None:
        self.tee, self.progress_fd = tee, progress_fd

    def wait(self, deadline: float) -> float:
        """Seconds to wait for the pipes: until ``deadline``, or until the tee is due."""
        left = deadline - time.monotonic()
        due = self.tee.due() if self.tee is not None else None
        if due is not None and self.tee is not None:
            left = min(left, due - self.tee.clock())
        return max(0.0, left)

    def read(self, fd: int, stream: str) -> memoryview:
        """Read what the job wrote on ``fd`` (as much as the pipe holds), into the tee's
        arena when it has room, else into this process's read buffer, and hand it to the
        tee; empty at end of file, valid until the next read."""
        into = self.tee.space(READ_BYTES) if self.tee is not None else None
        if into is None:
            buffer = read_buffer()
            chunk = buffer[:os.readv(fd, [buffer])]
            if self.tee is not None and chunk:
                self.tee.output(stream, bytes(chunk))  # the buffer is read into again
            return chunk
        count = os.readv(fd, [into])
        if self.tee is not None:
            self.tee.took(stream, count)
        return into[:count]

    def progress(self, chunk: bytes) -> None:
        if self.tee is not None:
            self.tee.progress(chunk)

    def tick(self) -> None:
        if self.tee is not None:
            self.tee.tick()

    def finish(self) -> None:
        """The job ended: read the reports still in the pipe (a bounded amount, without
        waiting), then hand on everything pending."""
        for _ in range(PROGRESS_DRAIN_READS):
            try:
                chunk = os.read(self.progress_fd, 65536) if self.progress_fd is not None else b""
            except BlockingIOError:
                break
            if not chunk:
                break
            self.progress(chunk)
        if self.tee is not None:
            self.tee.close()


def _pump(streams: dict[int, bytearray], report_fd: int, cap: int, deadline: float,
          live: _Live) -> tuple[bytes, dict[int, int], bool]:
    """Read stdout/stderr (keeping ``cap`` bytes each, counting the rest, teeing all of
    it to ``live``), the progress pipe and the report.

    Returns the report bytes, the bytes dropped per stream, and whether stdout, stderr
    and the report reached end-of-file before ``deadline`` (the progress pipe need
    not: a descendant of the job may hold it open).
    """
    report = bytearray()
    dropped = dict.fromkeys(streams, 0)
    names = dict(zip(streams, ("out", "err"), strict=True))
    sel = selectors.DefaultSelector()
    extra = () if live.progress_fd is None else (live.progress_fd,)
    for fd in (*streams, report_fd, *extra):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    open_fds = len(streams) + 1
    try:
        while open_fds and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=live.wait(deadline)):
                fd = int(key.fd)
                chunk = live.read(fd, names[fd]) if fd in names else os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_fds -= fd != live.progress_fd
                elif fd == report_fd:
                    report += chunk
                elif fd == live.progress_fd:
                    live.progress(bytes(chunk))
                else:
                    room = max(0, cap - len(streams[fd]))
                    streams[fd] += chunk[:room]
                    dropped[fd] += len(chunk) - min(room, len(chunk))
            live.tick()
    finally:
        sel.close()
    live.finish()
    return bytes(report), dropped, open_fds == 0


def output_pipe() -> tuple[int, int]:
    """A pipe for a job's stdout or stderr, with room for :data:`PIPE_BYTES` (where the
    host allows; else the default 64 KiB): a job printing fast keeps running while the
    pool process is busy for a moment (teeing to the live sink, a thread switch)
    instead of blocking on a full pipe."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size: keep the default
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return read_end, write_end


def _reap_launcher(pid: int, finished: bool) -> None:
    """Reap the launcher; one that outlived the grace period is told to kill its tree."""
    if not finished:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    release(pid, wait=not finished)


def execute(spec: Callable[[int, int, int], LaunchSpec], timeout: float, cap: int,
            tee: Tee | None = None) -> tuple[LaunchReport, str, bool, str, bool]:
    """Launch the job (``spec`` of its stdout, stderr and progress pipes' write ends) and
    capture its output while it runs, teeing it to ``tee``: the launcher's report, then
    stdout and stderr, each with whether it was cut."""
    out_r, out_w = output_pipe()
    err_r, err_w = output_pipe()
    progress_r, progress_w = os.pipe()
    try:
        launched = spec(out_w, err_w, progress_w)
        pid, report_fd = launch(replace(launched, close_in_launcher=(out_r, err_r, progress_r)))
    except BaseException:
        for fd in (out_r, err_r, progress_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, progress_w):
            os.close(fd)
    return collect(pid, (report_fd, out_r, err_r, progress_r), timeout, cap, tee)


def collect(pid: int, fds: tuple[int, int, int, int], timeout: float, cap: int,
            tee: Tee | None = None) -> tuple[LaunchReport, str, bool, str, bool]:
    """Capture a launched job's stdout and stderr until it ends (``fds``: the read ends
    of its report, stdout, stderr and progress pipes, all closed here), teeing them and
    its progress to ``tee``, reap its launcher, and return what :func:`execute` returns."""
    report_fd, out_r, err_r, progress_r = fds
    streams = {out_r: bytearray(), err_r: bytearray()}
    try:
        raw, dropped, finished = _pump(streams, report_fd, cap,
                                       time.monotonic() + timeout + GRACE_SECONDS,
                                       _Live(tee, progress_r))
    finally:
        for fd in fds:
            os.close(fd)
    _reap_launcher(pid, finished)
    stdout, out_cut = cap_text(bytes(streams[out_r]), cap, dropped[out_r])
    stderr, err_cut = cap_text(bytes(streams[err_r]), cap, dropped[err_r])
    report = parse_report(raw)
    if report.strays:
        stderr += STRAYS_MARKER.format(count=report.strays)
    return report, stdout, out_cut, stderr, err_cut
