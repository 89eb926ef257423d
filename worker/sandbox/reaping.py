"""Reaping launchers: one that has reported may still be tearing down its address space,
so the worker does not wait for it; it is reaped at the next launch instead.
"""

from __future__ import annotations

import contextlib
import os

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
