"""Reaping: launchers, and the helpers run outside a launcher.

A launcher that has reported may still be tearing down its address space, so the
worker does not wait for it; it is reaped at the next launch instead.

A command that builds namespaces (bubblewrap) may leave a process that outlives its
parent by a moment: bwrap's pid 1 in the new PID namespace is still exiting when the
outer bwrap has exited. Orphans go to the nearest subreaper, else to the host's PID 1,
and where that is not a real init (a container started without ``--init``, some VM
agents) nothing reaps them: the zombie keeps counting against its uid's RLIMIT_NPROC,
which is a job slot's process limit. :func:`run_reaped` runs such a command under a
throw-away subreaper that reaps everything before it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Sequence

from worker.sandbox.confine import prctl

PR_SET_CHILD_SUBREAPER = 36

_exiting: list[int] = []


def release(pid: int, *, wait: bool = False) -> None:
    """Reap a launcher that has reported; one still tearing down is reaped later."""
    try:
        done, _ = os.waitpid(pid, 0 if wait else os.WNOHANG)
    except ChildProcessError:  # already reaped by someone else
        return
    if not done:
        _exiting.append(pid)


def reap_finished_launchers() -> None:
    """Reap launchers that finished tearing down since they reported."""
    for pid in list(_exiting):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _exiting.remove(pid)


def reap_all_launchers() -> None:
    """Wait for every launcher still tearing down (before the process's cgroup goes)."""
    for pid in list(_exiting):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        _exiting.remove(pid)


def run_reaped(argv: Sequence[str], *, pass_fds: Sequence[int] = (), user: int | None = None,
               timeout: float = 30) -> tuple[int, str]:
    """Run ``argv`` (as ``user``, no extra groups) in a forked subreaper that reaps every
    descendant before it exits; return the exit code (-1: it could not run) and the tail
    of its stderr. For probes that start bubblewrap outside a launcher."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the subreaper
        try:
            os.close(read_end)
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            try:
                run = subprocess.run(list(argv), pass_fds=tuple(pass_fds), capture_output=True,
                                     timeout=timeout, user=user, group=user,
                                     extra_groups=[] if user is not None else None, check=False)
                reply = [run.returncode, run.stderr[-4000:].decode(errors="replace")]
            except (OSError, subprocess.SubprocessError) as exc:
                reply = [-1, f"cannot start {argv[0]}: {exc}"]
            while True:  # bwrap's pid 1 and anything else orphaned on the way
                try:
                    os.wait()
                except ChildProcessError:
                    break
            os.write(write_end, json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        raw = fh.read()
    os.waitpid(pid, 0)
    if not raw:
        return -1, "the probe process died without reporting"
    code, stderr = json.loads(raw)
    return int(code), str(stderr)
