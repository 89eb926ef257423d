"""The sandboxed executor: runs one Job in a fresh directory with limits.

Steps: make a private temporary directory (mode 0700, owned by the job user);
write the job's files (paths re-checked, nothing followed outside it); build the
environment from a minimal base plus the job's ``env`` (the worker's own
environment, broker URLs and ``SANDRUN_*``/``CELERY_*`` variables never reach
the job); decide the job's confinement from the settings and what the host
offers (``worker.sandbox.isolation``), refusing the job when a required mechanism is
missing; start the interpreter through the launcher (new session, confinement,
rlimits, subreaper, wall-clock kill of the whole tree); capture stdout/stderr up
to a cap while it runs; collect outputs by the job's globs; classify the
outcome; always remove the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from worker.models import FORBIDDEN_ENV_KEYS, FORBIDDEN_ENV_PREFIXES, Job, cap_text
from worker.sandbox.collect import CollectLimits, collect_outputs, remove_tree
from worker.sandbox.confine import IsolationError
from worker.sandbox.isolation import HostSupport, IsolationUnavailable, hand_over, plan_confinement
from worker.sandbox.launcher import (
    LaunchReport,
    LaunchSpec,
    Limits,
    launch,
    parse_report,
)
from worker.sandbox.reaping import reap_finished_launchers, release
from worker.stores.outputs import CollectedOutput

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_INTERPRETERS = frozenset(
    {"python3", "python", "bash", "sh", "node", "ruby", "Rscript", "perl"})
SCRIPT_SUFFIX = {"python3": ".py", "python": ".py", "node": ".js", "bash": ".sh", "sh": ".sh",
                 "ruby": ".rb", "Rscript": ".R", "perl": ".pl"}
#: Interpreters that reserve large virtual ranges at start (V8): limit data, not address space.
DATA_LIMITED = frozenset({"node"})
GRACE_SECONDS = 5.0
#: stderr of a job whose fork or spawn failed for want of processes (bash, Python, node).
FORK_FAILED = ("Resource temporarily unavailable", "EAGAIN")
log = structlog.get_logger("sandrun.sandbox")
STRAYS_MARKER = "\n[sandrun: killed {count} process(es) the job left running]\n"


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
    network_isolation: bool = False
    max_processes: int = 256
    filesystem_isolation: str = "auto"  # "auto", "required" or "off"
    job_user: str = "nobody"  # whom a root worker runs jobs as
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


def _limits(job: Job, config: SandboxConfig) -> Limits:
    memory = None if job.needs_gpu else job.memory_mb * 1024 * 1024
    kind = "data" if (job.interpreter in DATA_LIMITED) else "as"
    return Limits(memory, kind, job.cpu_seconds, config.file_size_limit_bytes,
                  config.open_files)


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


def _limit_hit(job: Job, report: LaunchReport, stderr: str) -> str | None:
    """The limit that ended the job, if any: process_limit, cpu_limit or memory_limit.

    ``process_limit`` needs both a fork failure in stderr and a sign that it
    mattered (strays left, a timeout, a non-zero exit): a fork bomb whose main
    process returns at once is caught by its strays."""
    fork_failed = any(s in stderr for s in FORK_FAILED) and ("fork" in stderr or
                                                             "spawn" in stderr)
    if fork_failed and (report.strays or report.timed_out or report.exit_code != 0):
        return "process_limit"
    if report.signal in (signal.SIGXCPU, signal.SIGKILL) and \
            report.cpu_seconds >= job.cpu_seconds - 0.05:
        return "cpu_limit"
    memory_hint = any(s in stderr for s in ("MemoryError", "Cannot allocate memory",
                                            "std::bad_alloc", "out of memory"))
    return "memory_limit" if memory_hint and not job.needs_gpu else None


def classify(job: Job, report: LaunchReport, stderr: str) -> str:
    """Name the outcome: completed, failed, process_limit, timeout, cpu_limit,
    memory_limit, signal."""
    if report.error:
        return "failed"
    limit = _limit_hit(job, report, stderr)
    if report.timed_out and limit != "process_limit":
        return "timeout"
    return limit or ("signal" if report.signal is not None else
                     "completed" if report.exit_code == 0 else "failed")


def _reap_launcher(pid: int, finished: bool) -> None:
    """Reap the launcher; one that outlived the grace period is told to kill its tree."""
    if not finished:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    release(pid, wait=not finished)


def _execute(spec: Callable[[int, int], LaunchSpec], timeout: float, cap: int
             ) -> tuple[LaunchReport, str, bool, str, bool]:
    """Launch the job (``spec`` of its stdout and stderr pipes) and capture its output while
    it runs: the launcher's report, then stdout and stderr, each with whether it was cut."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid, report_fd = launch(spec(out_w, err_w))
    os.close(out_w)
    os.close(err_w)
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


def run_in_sandbox(job: Job, config: SandboxConfig | None = None,
                   extra_env: dict[str, str] | None = None) -> SandboxRun:
    """Run ``job`` to completion and return what happened; never raises for job faults.

    A job the host cannot confine as the settings demand ends ``isolation_unavailable``
    without running."""
    config = config or SandboxConfig()
    root = Path(tempfile.mkdtemp(prefix="sandrun-job-", dir=config.workdir_root))
    isolation = "process"
    try:
        try:
            plan, isolation = plan_confinement(
                str(root), max_processes=config.max_processes, network=config.network_isolation,
                filesystem=config.filesystem_isolation, job_user=config.job_user,
                support=config.support)
            write_files(job, root)
            argv = command(job, root, config)
            env = job_environment(job, str(root), extra_env)
            hand_over(root, plan.user)
        except IsolationUnavailable as exc:
            return SandboxRun(outcome="isolation_unavailable", error=str(exc))
        except (SandboxError, IsolationError) as exc:
            return SandboxRun(outcome="failed", error=str(exc), isolation=isolation)
        limits = _limits(job, config)
        report, stdout, out_cut, stderr, err_cut = _execute(
            lambda out, err: LaunchSpec(argv, str(root), env, limits, out, err, job.timeout, plan),
            job.timeout, config.stream_cap_bytes)
        inputs = {path: hashlib.sha256(item.data()).hexdigest()
                  for path, item in job.files.items()}
        outputs, truncated = collect_outputs(root, job.outputs, CollectLimits(
            config.output_file_cap_bytes, config.output_total_cap_bytes,
            config.output_max_files, config.output_max_depth), inputs)
        return SandboxRun(
            outcome=classify(job, report, stderr), exit_code=report.exit_code,
            signal=report.signal, stdout=stdout, stderr=stderr, stdout_truncated=out_cut,
            stderr_truncated=err_cut, wall_seconds=report.wall_seconds,
            cpu_seconds=report.cpu_seconds, memory_peak_bytes=report.max_rss_bytes or None,
            outputs=outputs, outputs_truncated=truncated, isolation=isolation,
            error=report.error)
    finally:
        if not remove_tree(root):
            log.warning("job_directory_left", path=str(root))
        reap_finished_launchers()
