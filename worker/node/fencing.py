"""Fencing one job, not whatever its pool process runs by then.

The lease keeper (:mod:`worker.node.leasekeeper`) decides in the worker's main process
that a job must stop; the job runs in a pool process. A SIGTERM sent to that process
could land after the job ended and the process took its next job, which would then be
killed and run again elsewhere. So the keeper names the job instead:

* it writes the job's task id to ``<state_dir>/fences/<pid>`` and sends the pool process
  :data:`FENCE_SIGNAL`;
* the pool process, which :func:`arm` told the task id it runs, compares: the job it
  runs is the one named, so it ends itself with SIGTERM (the job's process tree goes
  with it, as before); any other job, or none, runs on and the signal is forgotten.

A pool process that never ran a job has no handler: the signal's default action (a
real-time signal's is to terminate) ends it, as SIGTERM did; it ran nothing a copy
could duplicate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import structlog

#: The real-time signal that asks a pool process to end the job the fence file names.
FENCE_SIGNAL = signal.SIGRTMIN + 3
log = structlog.get_logger("sandrun.worker")


class _Armed:
    """This pool process's job (None between jobs) and the directory of its fence file."""

    def __init__(self) -> None:
        self.task_id: str | None = None
        self.fences: Path | None = None
        self.pid = 0  # the process the handler was installed in


_armed = _Armed()


def fences_dir(state_dir: Path) -> Path:
    """Where a worker's main process names the jobs its pool processes must end."""
    return state_dir / "fences"


def fence_file(fences: Path, pid: int) -> Path:
    """Where the keeper names the job pool process ``pid`` must end."""
    return fences / str(pid)


def arm(fences: Path, task_id: str) -> None:
    """Say that this pool process now runs ``task_id``; installs the handler once per
    process (from the thread that runs jobs, the main one of a prefork pool process)."""
    if threading.current_thread() is not threading.main_thread():
        return  # a thread pool: jobs run in the worker's own process, never fenced
    if _armed.pid != os.getpid():
        signal.signal(FENCE_SIGNAL, _on_fence)
        _armed.pid = os.getpid()
    _armed.fences, _armed.task_id = fences, task_id


def disarm() -> None:
    """The job ended (its outcome stored, or none to store): a fence for it is late."""
    _armed.task_id = None


def _on_fence(signum: int, frame: FrameType | None) -> None:
    task_id, fences = _armed.task_id, _armed.fences
    if task_id is None or fences is None:
        return
    try:
        named = fence_file(fences, os.getpid()).read_text()
    except OSError:
        return
    if named != task_id:
        log.info("fence_ignored", task_id=named, running=task_id,
                 reason="the fenced job had ended; this process runs another")
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def send(fences: Path, pid: int, task_id: str) -> None:
    """Ask pool process ``pid`` to end ``task_id`` if, and only if, it still runs it."""
    fences.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = fence_file(fences, pid)
    draft = path.with_name(f".{pid}.new")
    draft.write_text(task_id)
    os.replace(draft, path)  # whole, never half-written, when the handler reads it
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, FENCE_SIGNAL)
