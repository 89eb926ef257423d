"""What a worker's sandbox is configured with, and what one run of a job reports.

Kept apart from the executor (:mod:`worker.sandbox.executor`) so that the modules around
it (the warm pool, the start-up check in :mod:`worker.sandbox.config`) can name both
without importing the executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.sandbox.isolation import HostSupport
from worker.sandbox.plan import Policy
from worker.sandbox.prepare import DEFAULT_INTERPRETERS
from worker.stores.outputs import CollectedOutput

DEFAULT_JOB_UIDS = "200000-200999"


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
