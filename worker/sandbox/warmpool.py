"""This pool process's warm sandbox: the next job's view, pre-started after each job.

Why and how a warm sandbox works is :mod:`worker.sandbox.warm`'s; this module keeps the
one a process has (:func:`take` gives it to the job it was built for), notes what the
next one should be after each job (:func:`leave_pending`) and builds it then or, in a
worker, once the job's result is stored (:func:`prestart_pending`), with a Python job's
interpreter pre-started in it where the last job was of that kind
(:mod:`worker.sandbox.warmpython`). :func:`drop` discards it when the process stops.
"""

from __future__ import annotations

import atexit
import os
import subprocess
from pathlib import Path

import structlog

from worker.models import MAX_CPU_SECONDS, Job
from worker.sandbox import jobdirs, warm, warmpython
from worker.sandbox.collect import remove_tree
from worker.sandbox.confine import IsolationError
from worker.sandbox.environments import needs_setup
from worker.sandbox.isolation import hand_over
from worker.sandbox.launcher import LaunchSpec, Limits
from worker.sandbox.plan import Plan
from worker.sandbox.prepare import BASE_PATH
from worker.sandbox.runspec import SandboxConfig
from worker.sandbox.views import plan_for, view

log = structlog.get_logger("sandrun.sandbox")
_exit_hooks: set[int] = set()


def _drop_at_exit() -> None:
    """Discard this process's warm sandbox when it exits normally (pool processes do it
    at ``worker_process_shutdown``, through ``release_slots``; this covers direct callers)."""
    if os.getpid() not in _exit_hooks:
        _exit_hooks.add(os.getpid())
        atexit.register(drop)


def drop() -> None:
    """Forget the pending pre-start and discard the warm sandbox of this process, waiting
    for its processes (they hold the slot's uid), and remove its directory."""
    pid = os.getpid()
    _pending.pop(pid, None)
    box = _warm.pop(pid, None)
    if box is not None:
        box.discard(wait=True)
        remove_tree(box.workdir)


_warm: dict[int, warm.Warm] = {}


def take(config: SandboxConfig, job: Job) -> warm.Warm | None:
    """This process's warm sandbox if it was built with ``config`` for a job like this one
    (no network, no GPU) and still waits. One built for another config, or dead, is
    discarded with its directory; a network or GPU job leaves it for the next job. The
    caller still checks that the job's plan is the one it was built with."""
    pid = os.getpid()
    box = _warm.get(pid)
    if box is None or ((job.network or job.needs_gpu or needs_setup(job))
                       and box.key[0] == config):
        return None  # kept for the next job it was built for
    del _warm[pid]
    if box.key[0] == config and box.alive():
        return box
    box.discard(wait=True)  # its processes hold the slot uid: gone before the next job
    remove_tree(box.workdir)
    return None


def prestart(config: SandboxConfig, slot: jobdirs.Slot | None, plan: Plan,
              python: str | None) -> bool:
    """Build the next job's sandbox now (:mod:`worker.sandbox.warm`), for jobs planned
    like this one, with the interpreter ``python`` pre-started in it
    (:mod:`worker.sandbox.warmpython`) or, None, a shell; a failure (False) only means
    the next job launches cold."""
    parent = slot.base if slot else jobdirs.jobs_root(config.workdir_root)
    root = jobdirs.new_jobdir(parent, None)
    try:
        pre = warmpython.place(root, python) if python is not None else None
        hand_over(root, plan.confinement.user)
        argv = [python, warmpython.SCRIPT] if python is not None else [warm.SHELL, "-s"]
        made = view(config, root, plan, argv, gpu=False)
        limits = Limits(None, "as", MAX_CPU_SECONDS, config.file_size_limit_bytes,
                        config.open_files)
        env = pre.startup_env if pre is not None else {"PATH": BASE_PATH}
        spec = LaunchSpec(made.argv, str(root), env, limits, -1, -1, 0.0,
                          plan.confinement, tuple(made.fds), wrapped=True)
        try:
            _drop_at_exit()
            _warm[os.getpid()] = warm.prestart((config, plan), root, spec, pre)
        finally:
            for fd in made.fds:
                os.close(fd)
    except (OSError, IsolationError, subprocess.SubprocessError) as exc:
        log.warning("warm_sandbox_failed", error=str(exc), interpreter=python)
        remove_tree(root)
        return False
    return True


def prestart_pending() -> None:
    """Pre-start the sandbox a ``run_in_sandbox(..., warm_next=False)`` left for later: the
    worker calls it once the job's result is stored, off the job's round trip."""
    pending = _pending.pop(os.getpid(), None)
    if pending is None or os.getpid() in _warm:  # one waits already: keep it
        return
    config, slot, root, python = pending
    try:
        plan = plan_for(None, config, root, slot)
    except IsolationError:
        return  # a plain job could not run here: nothing to pre-start
    if not prestart(config, slot, plan, python) and python is not None:
        prestart(config, slot, plan, None)  # a shell still takes the view off the job's path


#: The next job's sandbox to pre-start: the config, slot, directory and interpreter of the
#: last job (its plan is made at the pre-start, off the job's round trip).
_pending: dict[int, tuple[SandboxConfig, jobdirs.Slot | None, Path, str | None]] = {}


def leave_pending(config: SandboxConfig, slot: jobdirs.Slot | None, root: Path,
                   now: bool, python: str | None) -> None:
    """Note the next job's sandbox to pre-start (``now``, or at :func:`prestart_pending`),
    with ``python`` pre-started in it when this job could use one (jobs come in kinds)."""
    _pending[os.getpid()] = (config, slot, root, python)
    if now:
        prestart_pending()
