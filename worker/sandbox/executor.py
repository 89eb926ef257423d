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
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from worker.models import MAX_CPU_SECONDS, Job
from worker.sandbox import bwrap, cgroups, jobdirs, seccomp, warm, warmpython
from worker.sandbox.capture import execute
from worker.sandbox.collect import CollectLimits, collect_outputs, remove_tree
from worker.sandbox.confine import IsolationError
from worker.sandbox.environments import Setup, job_setup, needs_setup
from worker.sandbox.isolation import HostSupport, IsolationUnavailable, hand_over, job_user_ids
from worker.sandbox.launcher import LaunchReport, LaunchSpec, Limits
from worker.sandbox.live import LiveSink, Tee
from worker.sandbox.outcome import classify
from worker.sandbox.plan import JobNeeds, Plan, Policy, plan_confinement
from worker.sandbox.prepare import (
    BASE_PATH,
    DATA_LIMITED,
    DEFAULT_INTERPRETERS,
    EnvironmentUnavailable,
    SandboxError,
    command,
    job_environment,
    write_files,
)
from worker.sandbox.progress import ENV_VAR as PROGRESS_ENV
from worker.sandbox.reaping import reap_all_launchers, reap_finished_launchers
from worker.stores.outputs import CollectedOutput

DEFAULT_JOB_UIDS = "200000-200999"
log = structlog.get_logger("sandrun.sandbox")


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Caps and policy of one worker's sandbox."""

    stream_cap_bytes: int = 1 << 20
    live_output_bytes: int = 16 << 20  # teed to a live sink per job (worker.sandbox.live)
    output_file_cap_bytes: int = 10 << 20
    output_total_cap_bytes: int = 50 << 20
    output_max_files: int = 1000
    output_max_depth: int = 32
    file_size_limit_bytes: int = 64 << 20
    open_files: int = 256
    interpreters: frozenset[str] = DEFAULT_INTERPRETERS
    workdir_root: str | None = None
    max_processes: int = 256
    policy: Policy = field(default_factory=Policy)
    job_user: str = "nobody"  # whom a root worker runs jobs as without a uid range
    job_uids: str | None = DEFAULT_JOB_UIDS  # a root worker's per-slot uids; None: job_user
    disk_bytes: int = 256 << 20  # per job (the slot's tmpfs); 0: no cap
    tmp_bytes: int = 64 << 20  # the job's private /tmp and /dev/shm, each
    warm: bool = True  # pre-start the next job's view after each job (worker.sandbox.warm)
    #: in it, the interpreter of a Python code job (worker.sandbox.warmpython)
    warm_python: bool = True
    support: HostSupport | None = None  # None: probe this host
    environments_dir: str | None = None  # prepared environments (worker.sandbox.environments)
    wheel_cache: str | None = None  # wheels requirement layers are installed from
    layers_dir: str | None = None  # where layers are kept (None: <tmp>/sandrun-layers)


@dataclass(slots=True)
class SandboxRun:
    """Everything the executor measured about one run."""

    outcome: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_peak_bytes: int | None = None
    outputs: list[CollectedOutput] = field(default_factory=list)
    outputs_truncated: bool = False
    isolation: str = "process"
    error: str | None = None


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


@dataclass(slots=True)
class _Prepared:
    """A job ready to start: its argv, environment and the descriptors bwrap reads."""

    argv: list[str]
    env: dict[str, str]
    fds: list[int]


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
    _pending.pop(pid, None)
    box = _warm.pop(pid, None)
    if box is not None:
        box.discard(wait=True)
        remove_tree(box.workdir)
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


def _view(config: SandboxConfig, root: Path, plan: Plan, argv: list[str], gpu: bool, *,
          read_only: tuple[str, ...] = ()) -> _Prepared:
    """bwrap's command running ``argv`` in the job's view, and the descriptors it reads."""
    uid, gid = plan.confinement.user or (os.getuid(), os.getgid())
    gpus = tuple(d for d in plan.confinement.devices if d.startswith(("/dev/nvidia", "/dev/dri")))
    view = bwrap.View(str(root), uid, gid, network=plan.network, tmp_bytes=config.tmp_bytes,
                      shm_bytes=config.tmp_bytes, devices=gpus if gpu else (),
                      read_only=read_only)
    filter_fd = seccomp.filter_fd() if plan.seccomp else None
    cmd = bwrap.command(view, argv, filter_fd)
    return _Prepared(cmd.argv, {}, cmd.fds + ([filter_fd] if filter_fd is not None else []))


def _prepare(job: Job, config: SandboxConfig, root: Path, plan: Plan, *,
             extra_env: dict[str, str] | None, warm_box: warm.Warm | None,
             setup: Setup) -> _Prepared:
    """The job's files written, its argv (through bwrap when the plan has a view and no
    warm sandbox waits for it), its environment, and the descriptors to hand to bwrap."""
    write_files(job, root)
    argv = command(job, root, config.interpreters, setup.search_path)
    env = setup.apply(job_environment(job, str(root), extra_env), job)
    hand_over(root, plan.confinement.user)
    if not plan.view or warm_box is not None:
        return _Prepared(argv, env, [])
    viewed = _view(config, root, plan, argv, job.needs_gpu, read_only=setup.binds)
    return _Prepared(viewed.argv, env, viewed.fds)


_warm: dict[int, warm.Warm] = {}


def _take_warm(config: SandboxConfig, job: Job) -> warm.Warm | None:
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


def _prestart(config: SandboxConfig, slot: jobdirs.Slot | None, plan: Plan,
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
        view = _view(config, root, plan, argv, gpu=False)
        limits = Limits(None, "as", MAX_CPU_SECONDS, config.file_size_limit_bytes,
                        config.open_files)
        env = pre.startup_env if pre is not None else {"PATH": BASE_PATH}
        spec = LaunchSpec(view.argv, str(root), env, limits, -1, -1, 0.0,
                          plan.confinement, tuple(view.fds), wrapped=True)
        try:
            _release_at_exit()
            _warm[os.getpid()] = warm.prestart((config, plan), root, spec, pre)
        finally:
            for fd in view.fds:
                os.close(fd)
    except (OSError, IsolationError, subprocess.SubprocessError) as exc:
        log.warning("warm_sandbox_failed", error=str(exc), interpreter=python)
        remove_tree(root)
        return False
    return True


def _plan(job: Job | None, config: SandboxConfig, root: Path, slot: jobdirs.Slot | None
          ) -> Plan:
    """The job's plan (``job`` None: the plan of a job that asks for nothing special)."""
    user = (slot.uid, slot.uid) if slot else job_user_ids(config.job_user)
    needs = JobNeeds(job.network, job.isolation == "network") if job else JobNeeds()
    return plan_confinement(str(root), max_processes=config.max_processes,
                            policy=config.policy, user=user, own_uid=slot is not None,
                            needs=needs, support=config.support)


def _run(job: Job, config: SandboxConfig, root: Path, plan: Plan, *, ready: _Prepared,
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


def _launch(job: Job, config: SandboxConfig, root: Path, plan: Plan, *, ready: _Prepared,
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


def prestart_pending() -> None:
    """Pre-start the sandbox a ``run_in_sandbox(..., warm_next=False)`` left for later: the
    worker calls it once the job's result is stored, off the job's round trip."""
    pending = _pending.pop(os.getpid(), None)
    if pending is None or os.getpid() in _warm:  # one waits already: keep it
        return
    config, slot, root, python = pending
    try:
        plan = _plan(None, config, root, slot)
    except IsolationError:
        return  # a plain job could not run here: nothing to pre-start
    if not _prestart(config, slot, plan, python) and python is not None:
        _prestart(config, slot, plan, None)  # a shell still takes the view off the job's path


#: The next job's sandbox to pre-start: the config, slot, directory and interpreter of the
#: last job (its plan is made at the pre-start, off the job's round trip).
_pending: dict[int, tuple[SandboxConfig, jobdirs.Slot | None, Path, str | None]] = {}


def run_in_sandbox(job: Job, config: SandboxConfig | None = None,
                   extra_env: dict[str, str] | None = None, *, warm_next: bool = True,
                   live: LiveSink | None = None) -> SandboxRun:
    """Run ``job`` to completion and return what happened; never raises for job faults.

    What the job prints and reports as progress goes to ``live`` while it runs
    (:mod:`worker.sandbox.live`). A job the host cannot confine as the settings demand
    ends ``isolation_unavailable`` without running. Afterwards the next job's sandbox is
    pre-started (``warm_next``), or left for :func:`prestart_pending`."""
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
        box = _take_warm(config, job)
        root = box.workdir if box else jobdirs.new_jobdir(
            slot.base if slot else jobdirs.jobs_root(config.workdir_root), None)
    except (IsolationError, OSError, ValueError) as exc:
        return SandboxRun(outcome="failed", error=f"cannot make the job's directory: {exc}")
    plan: Plan | None = None
    python: str | None = None  # the interpreter to pre-start for the next job like this one
    try:
        try:
            plan = _plan(job, config, root, slot)
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
            _leave_pending(config, slot, root, warm_next, python)


def _leave_pending(config: SandboxConfig, slot: jobdirs.Slot | None, root: Path,
                   now: bool, python: str | None) -> None:
    """Note the next job's sandbox to pre-start (``now``, or at :func:`prestart_pending`),
    with ``python`` pre-started in it when this job could use one (jobs come in kinds)."""
    _pending[os.getpid()] = (config, slot, root, python)
    if now:
        prestart_pending()
