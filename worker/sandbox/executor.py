"""The sandboxed executor: runs one Job in a fresh directory with limits.

Steps: take this process's slot (a uid and a disk of its own, :mod:`worker.sandbox.jobdirs`)
and make the job's directory in it; write the job's files (paths re-checked,
nothing followed outside it); build the environment from a minimal base plus the
job's ``env`` (the worker's own environment, broker URLs and ``SANDRUN_*``/``CELERY_*``
variables never reach the job); decide the job's confinement from the policy and
what the host offers (:mod:`worker.sandbox.plan`), refusing the job when a
required layer is missing; start the interpreter through the launcher, inside a
bubblewrap view where the host has one (new namespaces, seccomp, rlimits,
subreaper, wall-clock kill of the whole tree), with its memory cgroup armed;
capture stdout/stderr up to a cap while it runs; collect outputs by the job's
globs; classify the outcome; always remove the directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from worker.models import FORBIDDEN_ENV_KEYS, FORBIDDEN_ENV_PREFIXES, Job
from worker.sandbox import bwrap, cgroups, jobdirs, seccomp
from worker.sandbox.capture import execute
from worker.sandbox.collect import CollectLimits, collect_outputs, remove_tree
from worker.sandbox.confine import IsolationError
from worker.sandbox.isolation import HostSupport, IsolationUnavailable, hand_over, job_user_ids
from worker.sandbox.launcher import LaunchReport, LaunchSpec, Limits
from worker.sandbox.outcome import classify
from worker.sandbox.plan import JobNeeds, Plan, Policy, plan_confinement
from worker.sandbox.reaping import reap_finished_launchers
from worker.stores.outputs import CollectedOutput

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_INTERPRETERS = frozenset(
    {"python3", "python", "bash", "sh", "node", "ruby", "Rscript", "perl"})
SCRIPT_SUFFIX = {"python3": ".py", "python": ".py", "node": ".js", "bash": ".sh", "sh": ".sh",
                 "ruby": ".rb", "Rscript": ".R", "perl": ".pl"}
#: Interpreters that reserve large virtual ranges at start (V8): limit data, not address space.
DATA_LIMITED = frozenset({"node"})
DEFAULT_JOB_UIDS = "200000-200999"
log = structlog.get_logger("sandrun.sandbox")


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Caps and policy of one worker's sandbox."""

    stream_cap_bytes: int = 1 << 20
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
    support: HostSupport | None = None  # None: probe this host


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


class SandboxError(Exception):
    """The job cannot be run as given (bad file layout, interpreter not allowed)."""


def job_environment(job: Job, workdir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The job's whole environment: a minimal base, worker-chosen extras, then the job's env."""
    for key in job.env:
        if key in FORBIDDEN_ENV_KEYS or key.startswith(FORBIDDEN_ENV_PREFIXES):
            raise SandboxError(f"environment variable {key!r} may not be set by a job")
    base = {"PATH": BASE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "SANDRUN_JOB_ID": job.id}
    return {**base, **(extra or {}), **job.env}


def write_files(job: Job, root: Path) -> None:
    """Write the job's files under ``root``; refuse any path that would leave it."""
    for rel, item in job.files.items():
        target = root / rel
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        if not parent.resolve().is_relative_to(root.resolve()):
            raise SandboxError(f"file {rel!r} would be written outside the job directory")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(target, flags, 0o755 if item.executable else 0o644)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise SandboxError(f"file {rel!r} clashes with another file of the job") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(item.data())


def command(job: Job, root: Path, config: SandboxConfig) -> list[str]:
    """argv for the job: the interpreter (found on the base PATH) and its script."""
    interpreter = job.interpreter or "python3"
    if interpreter not in config.interpreters:
        allowed = ", ".join(sorted(config.interpreters))
        raise SandboxError(f"interpreter {interpreter!r} is not allowed on this worker "
                           f"(allowed: {allowed})")
    path = shutil.which(interpreter, path=BASE_PATH)
    if path is None:
        raise SandboxError(f"interpreter {interpreter!r} is not installed on this worker")
    if job.code is not None:
        script = f"__sandrun_main__{SCRIPT_SUFFIX.get(interpreter, '')}"
        (root / script).write_text(job.code, encoding="utf-8")
    else:
        script = str(job.entrypoint)
    return [path, script, *job.args]


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
        uids = jobdirs.UidRange.parse(config.job_uids)
        _slots[key] = jobdirs.acquire(config.workdir_root, uids, config.disk_bytes)
    return _slots[key]


@dataclass(slots=True)
class _Prepared:
    """A job ready to start: its argv, environment and the descriptors bwrap reads."""

    argv: list[str]
    env: dict[str, str]
    fds: list[int]


def release_slots() -> None:
    """Give back this process's slots and memory cgroup (when a pool process stops): the
    slot's disk is unmounted and removed, its uid lock freed, the cgroup removed. What a
    killed process could not give back, the next :func:`jobdirs.sweep` takes."""
    pid = os.getpid()
    for key in [k for k in _slots if k[0] == pid]:
        slot = _slots.pop(key)
        jobdirs.release(slot)
    memory = cgroups.slot() if cgroups.joined() else None
    if memory is not None:
        try:
            memory.leave_and_remove()
        except IsolationError as exc:
            log.warning("memory_cgroup_left", error=str(exc))


def _prepare(job: Job, config: SandboxConfig, root: Path, plan: Plan,
             extra_env: dict[str, str] | None) -> _Prepared:
    """The job's files written, its argv (through bwrap when the plan has a view), its
    environment, and the descriptors to hand to bwrap."""
    user = plan.confinement.user
    write_files(job, root)
    argv = command(job, root, config)
    env = job_environment(job, str(root), extra_env)
    hand_over(root, user)
    if not plan.view:
        return _Prepared(argv, env, [])
    uid, gid = user or (os.getuid(), os.getgid())
    gpus = tuple(d for d in plan.confinement.devices if d.startswith(("/dev/nvidia", "/dev/dri")))
    view = bwrap.View(str(root), uid, gid, network=plan.network, tmp_bytes=config.tmp_bytes,
                      shm_bytes=config.tmp_bytes, devices=gpus if job.needs_gpu else ())
    filter_fd = seccomp.filter_fd() if plan.seccomp else None
    cmd = bwrap.command(view, argv, filter_fd)
    return _Prepared(cmd.argv, env, cmd.fds + ([filter_fd] if filter_fd is not None else []))


def _plan(job: Job, config: SandboxConfig, root: Path, slot: jobdirs.Slot | None) -> Plan:
    user = (slot.uid, slot.uid) if slot else job_user_ids(config.job_user)
    return plan_confinement(str(root), max_processes=config.max_processes,
                            policy=config.policy, user=user, own_uid=slot is not None,
                            needs=JobNeeds(job.network, job.isolation == "network"),
                            support=config.support)


def _run(job: Job, config: SandboxConfig, root: Path, plan: Plan, ready: _Prepared
         ) -> SandboxRun:
    memory = cgroups.slot() if plan.cgroup else None
    if memory is not None:
        memory.arm(job.memory_mb * 1024 * 1024)
    try:
        limits = _limits(job, config, plan)
        report, stdout, out_cut, stderr, err_cut = execute(
            lambda out, err: LaunchSpec(ready.argv, str(root), ready.env, limits, out, err,
                                        job.timeout, plan.confinement, tuple(ready.fds),
                                        plan.view),
            job.timeout, config.stream_cap_bytes)
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


def _exit_status_through_bwrap(report: LaunchReport) -> None:
    """bwrap exits 128+N when the job died of signal N: report it as that signal."""
    code = report.exit_code
    if code is not None and 128 < code < 128 + 65:
        report.exit_code, report.signal = None, code - 128


def run_in_sandbox(job: Job, config: SandboxConfig | None = None,
                   extra_env: dict[str, str] | None = None) -> SandboxRun:
    """Run ``job`` to completion and return what happened; never raises for job faults.

    A job the host cannot confine as the settings demand ends ``isolation_unavailable``
    without running."""
    config = config or SandboxConfig()
    try:
        slot = slot_of_this_process(config)
        root = jobdirs.new_jobdir(slot.base if slot else jobdirs.jobs_root(config.workdir_root),
                                  None)
    except (IsolationError, OSError, ValueError) as exc:
        return SandboxRun(outcome="failed", error=f"cannot make the job's directory: {exc}")
    try:
        try:
            plan = _plan(job, config, root, slot)
            ready = _prepare(job, config, root, plan, extra_env)
        except IsolationUnavailable as exc:
            return SandboxRun(outcome="isolation_unavailable", error=str(exc))
        except (SandboxError, IsolationError) as exc:
            return SandboxRun(outcome="failed", error=str(exc))
        return _run(job, config, root, plan, ready)
    finally:
        if not remove_tree(root):
            log.warning("job_directory_left", path=str(root))
        reap_finished_launchers()
