"""The sandboxed executor: runs one Job in a fresh directory with limits.

Steps: take this process's slot (a uid and a disk of its own, :mod:`worker.sandbox.jobdirs`)
and make the job's directory in it; write the job's files (paths re-checked,
nothing followed outside it); build the environment from a minimal base plus the
job's ``env`` (the worker's own environment, broker URLs and ``SANDRUN_*``/``CELERY_*``
variables never reach the job); resolve its prepared environment and requirement layer
(:mod:`worker.sandbox.environments`, ``environment_error`` when they cannot be had);
decide the job's confinement from the policy and
what the host offers (:mod:`worker.sandbox.plan`), refusing the job when a
required layer is missing; start the interpreter through the launcher, inside a
bubblewrap view where the host has one (new namespaces, seccomp, rlimits,
subreaper, wall-clock kill of the whole tree), with its memory cgroup armed;
capture stdout/stderr up to a cap while it runs, teeing them and the job's progress
reports to the node's live sink; collect outputs by the job's
globs; classify the outcome; always remove the directory.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
from pathlib import Path

import structlog

from worker.models import Job
from worker.sandbox import cgroups, jobdirs, warm, warmpool, warmpython
from worker.sandbox.capture import execute
from worker.sandbox.collect import CollectLimits, collect_outputs, remove_tree
from worker.sandbox.confine import IsolationError
from worker.sandbox.environments import Setup, job_setup
from worker.sandbox.isolation import IsolationUnavailable, hand_over
from worker.sandbox.launcher import LaunchReport, LaunchSpec, Limits
from worker.sandbox.live import LiveSink, Tee
from worker.sandbox.outcome import classify
from worker.sandbox.plan import Plan
from worker.sandbox.prepare import (
    DATA_LIMITED,
    EnvironmentUnavailable,
    SandboxError,
    command,
    job_environment,
    write_files,
)
from worker.sandbox.progress import ENV_VAR as PROGRESS_ENV
from worker.sandbox.reaping import reap_all_launchers, reap_finished_launchers
from worker.sandbox.runspec import DEFAULT_JOB_UIDS, SandboxConfig, SandboxRun
from worker.sandbox.views import Prepared, plan_for, view
from worker.sandbox.warmpool import prestart_pending

__all__ = ["DEFAULT_JOB_UIDS", "SandboxConfig", "SandboxRun", "prestart_pending",
           "release_slots", "run_in_sandbox", "slot_of_this_process"]
log = structlog.get_logger("sandrun.sandbox")


def _limits(job: Job, config: SandboxConfig, plan: Plan) -> Limits:
    """rlimits of the job: memory only where no cgroup limits it (and never for GPU jobs,
    whose drivers reserve address space they never touch)."""
    memory = None if job.needs_gpu or plan.cgroup else job.memory_mb * 1024 * 1024
    kind = "data" if (job.interpreter in DATA_LIMITED) else "as"
    return Limits(memory, kind, job.cpu_seconds, config.file_size_limit_bytes,
                  config.open_files)


_slots: dict[tuple[int, str | None], jobdirs.Slot] = {}


def slot_of_this_process(config: SandboxConfig) -> jobdirs.Slot | None:
    """This process's slot (taken at its first job and kept), or None where jobs have no
    uid of their own: a worker that is not root, or ``SANDRUN_JOB_UIDS`` unset."""
    if not config.job_uids or os.geteuid() != 0:
        return None
    key = os.getpid(), config.workdir_root
    if key not in _slots:
        _release_at_exit()
        uids = jobdirs.UidRange.parse(config.job_uids)
        _slots[key] = jobdirs.acquire(config.workdir_root, uids, config.disk_bytes)
    return _slots[key]


_exit_hooks: set[int] = set()


def _release_at_exit() -> None:
    """Release this process's slots and warm sandbox when it exits normally (pool
    processes release them at ``worker_process_shutdown``; this covers direct callers)."""
    if os.getpid() not in _exit_hooks:
        _exit_hooks.add(os.getpid())
        atexit.register(release_slots)


def release_slots() -> None:
    """Give back this process's slots and memory cgroup (when a pool process stops): the
    slot's disk is unmounted and removed, its uid lock freed, the cgroup removed. What a
    killed process could not give back, the next :func:`jobdirs.sweep` takes."""
    pid = os.getpid()
    warmpool.drop()  # its processes hold the slot's uid and disk
    for key in [k for k in _slots if k[0] == pid]:
        slot = _slots.pop(key)
        jobdirs.release(slot)
    memory = cgroups.slot() if cgroups.joined() else None
    if memory is not None:
        reap_all_launchers()
        try:
            memory.leave_and_remove()
        except IsolationError as exc:
            log.warning("memory_cgroup_left", error=str(exc))


def _prepare(job: Job, config: SandboxConfig, root: Path, plan: Plan, *,
             extra_env: dict[str, str] | None, warm_box: warm.Warm | None,
             setup: Setup) -> Prepared:
    """The job's files written, its argv (through bwrap when the plan has a view and no
    warm sandbox waits for it), its environment, and the descriptors to hand to bwrap."""
    write_files(job, root)
    argv = command(job, root, config.interpreters, setup.search_path)
    env = setup.apply(job_environment(job, str(root), extra_env), job)
    hand_over(root, plan.confinement.user)
    if not plan.view or warm_box is not None:
        return Prepared(argv, env, [])
    viewed = view(config, root, plan, argv, job.needs_gpu, read_only=setup.binds)
    return Prepared(viewed.argv, env, viewed.fds)


def _run(job: Job, config: SandboxConfig, root: Path, plan: Plan, *, ready: Prepared,
         box: warm.Warm | None, live: LiveSink | None) -> SandboxRun:
    memory = cgroups.slot() if plan.cgroup else None
    if memory is not None:
        memory.arm(job.memory_mb * 1024 * 1024)
    try:
        report, stdout, out_cut, stderr, err_cut = _launch(job, config, root, plan,
                                                           ready=ready, box=box, live=live)
    finally:
        for fd in ready.fds:
            os.close(fd)
        use = memory.disarm() if memory is not None else None
    if plan.view:
        _exit_status_through_bwrap(report)
    inputs = {path: hashlib.sha256(item.data()).hexdigest() for path, item in job.files.items()}
    outputs, truncated = collect_outputs(root, job.outputs, CollectLimits(
        config.output_file_cap_bytes, config.output_total_cap_bytes,
        config.output_max_files, config.output_max_depth), inputs)
    peak = use.peak_bytes if use is not None else (
        None if plan.view else report.max_rss_bytes or None)
    outcome = "memory_limit" if use is not None and use.oom_killed and report.error is None \
        and not report.timed_out else classify(job, report, stderr)
    return SandboxRun(
        outcome=outcome, exit_code=report.exit_code, signal=report.signal, stdout=stdout,
        stderr=stderr, stdout_truncated=out_cut, stderr_truncated=err_cut,
        wall_seconds=report.wall_seconds, cpu_seconds=report.cpu_seconds,
        memory_peak_bytes=peak, outputs=outputs, outputs_truncated=truncated,
        isolation=plan.isolation, error=report.error)


def _launch(job: Job, config: SandboxConfig, root: Path, plan: Plan, *, ready: Prepared,
            box: warm.Warm | None, live: LiveSink | None
            ) -> tuple[LaunchReport, str, bool, str, bool]:
    """Start the job (through ``box`` when it has one, else cold) with its progress pipe
    named in ``SANDRUN_PROGRESS_FD``, and capture it, teeing to ``live``."""
    limits = _limits(job, config, plan)
    tee = Tee(live, config.live_output_bytes) if live is not None else None
    if box is not None:
        rlimit = (limits.memory_kind, limits.memory_bytes) if limits.memory_bytes else None
        env = {**ready.env, PROGRESS_ENV: str(box.progress_fd)}
        line = warmpython.message(env, job.cpu_seconds, rlimit) if box.python is not None \
            else warm.script(ready.argv, env, job.cpu_seconds, rlimit)
        return box.run(line, job.timeout, config.stream_cap_bytes, tee)
    return execute(
        lambda out, err, progress: LaunchSpec(
            ready.argv, str(root), {**ready.env, PROGRESS_ENV: str(progress)}, limits, out,
            err, job.timeout, plan.confinement, (*ready.fds, progress), plan.view),
        job.timeout, config.stream_cap_bytes, tee)


def _exit_status_through_bwrap(report: LaunchReport) -> None:
    """bwrap exits 128+N when the job died of signal N: report it as that signal."""
    code = report.exit_code
    if code is not None and 128 < code < 128 + 65:
        report.exit_code, report.signal = None, code - 128


def run_in_sandbox(job: Job, config: SandboxConfig | None = None,
                   extra_env: dict[str, str] | None = None, *, warm_next: bool = True,
                   live: LiveSink | None = None) -> SandboxRun:
    """Run ``job`` to completion and return what happened; never raises for job faults.

    What the job prints and reports as progress goes to ``live`` while it runs
    (:mod:`worker.sandbox.live`). A job the host cannot confine as the settings demand
    ends ``isolation_unavailable`` without running. Afterwards the next job's sandbox is
    pre-started (``warm_next``), or left for :func:`~worker.sandbox.warmpool.prestart_pending`."""
    with _one_job_at_a_time:
        return _run_alone(job, config or SandboxConfig(), extra_env, warm_next, live)


#: A process runs one job at a time: its slot (one uid, one disk), its memory cgroup and
#: its warm sandbox are each for a single job. Threads of one process (``-P threads``)
#: take turns; run more processes (prefork) for more jobs at once.
_one_job_at_a_time = threading.Lock()


def _run_alone(job: Job, config: SandboxConfig, extra_env: dict[str, str] | None,
               warm_next: bool, live: LiveSink | None) -> SandboxRun:
    box: warm.Warm | None = None
    try:
        slot = slot_of_this_process(config)
        box = warmpool.take(config, job)
        root = box.workdir if box else jobdirs.new_jobdir(
            slot.base if slot else jobdirs.jobs_root(config.workdir_root), None)
    except (IsolationError, OSError, ValueError) as exc:
        return SandboxRun(outcome="failed", error=f"cannot make the job's directory: {exc}")
    plan: Plan | None = None
    python: str | None = None  # the interpreter to pre-start for the next job like this one
    try:
        try:
            plan = plan_for(job, config, root, slot)
            setup = job_setup(job, environments_dir=config.environments_dir,
                              wheel_cache=config.wheel_cache, layers_dir=config.layers_dir)
            python = warmpython.interpreter_for(
                job, root, setup.apply(job_environment(job, str(root), extra_env), job),
                search_path=setup.search_path, allowed=config.interpreters,
            ) if config.warm_python else None
            if box is not None and (box.key != (config, plan) or (
                    box.python is not None and box.python.interpreter != python)):
                box.discard(wait=True)  # not for this job; its directory serves a cold launch
                box = None
            ready = _prepare(job, config, root, plan, extra_env=extra_env, warm_box=box,
                             setup=setup)
        except IsolationUnavailable as exc:
            return SandboxRun(outcome="isolation_unavailable", error=str(exc))
        except EnvironmentUnavailable as exc:
            return SandboxRun(outcome="environment_error", error=str(exc))
        except (SandboxError, IsolationError) as exc:
            return SandboxRun(outcome="failed", error=str(exc))
        return _run(job, config, root, plan, ready=ready, box=box, live=live)
    finally:
        if box is not None and not box.used:  # the job never reached it (refused, bad input)
            box.discard()
        if not remove_tree(root):
            log.warning("job_directory_left", path=str(root))
        reap_finished_launchers()
        if plan is not None and plan.view and config.warm:
            warmpool.leave_pending(config, slot, root, warm_next, python)


