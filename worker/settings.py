"""Sandrun's own settings (not Celery's), read from ``SANDRUN_*`` environment variables.

Celery settings live in ``celeryconfig.py``; these are what the producer client
and the worker runtime need on top: plugins, attempts, queues, GPUs, pricing and
sandbox caps. Complex values are JSON (``SANDRUN_GPUS`` also has a compact form,
``a100:40:8.0:12.2*2``: :mod:`worker.models.gpus`).

A job still running when the broker's visibility timeout expires is delivered a
second time, so workers refuse to start unless ``SANDRUN_VISIBILITY_TIMEOUT`` is at
least ``SANDRUN_MAX_JOB_TIMEOUT`` (the longest timeout a job may ask for here,
default and at most one hour) plus ``SANDRUN_VISIBILITY_MARGIN`` (600 s). A
deployment of short jobs lowers the first, so that jobs of a dead worker come back
sooner; jobs asking for more are refused at submit and rejected by workers.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigurationError
from worker.models import MAX_TIMEOUT_SECONDS
from worker.models.gpus import GPUCard, parse_gpus
from worker.models.pricing import Pricing

#: The default of ``SANDRUN_VISIBILITY_MARGIN``: how much longer than the longest job
#: the broker's visibility timeout must be.
VISIBILITY_MARGIN_SECONDS = 600
#: Retention defaults: results and outputs a day (Celery's own result_expires default),
#: dead letters a week, time enough for an operator to look at them after a weekend.
RESULT_TTL_SECONDS = 24 * 3600
OUTPUT_TTL_SECONDS = 24 * 3600
DEAD_LETTER_TTL_SECONDS = 7 * 24 * 3600
#: ``SANDRUN_RUNNING_LEASE_SECONDS``: a partition shorter than a minute runs a job once;
#: a host that dies holds its jobs' leases (their copies wait) at most that long.
RUNNING_LEASE_SECONDS = 60.0
#: Below this, the margin a worker keeps to stop a job before its lease lapses (two
#: bounded renewal calls and a second) would eat most of the lease.
MIN_RUNNING_LEASE_SECONDS = 10.0


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/sandrun`` or ``~/.local/state/sandrun``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sandrun"


class Settings(BaseSettings):
    """Everything ``SANDRUN_*`` configures besides Celery itself."""

    model_config = SettingsConfigDict(env_prefix="SANDRUN_", extra="ignore")
    broker_url: str | None = None
    result_backend: str | None = None
    plugins: str | None = Field(default=None, description="JSON list of plugin specs")
    plugin_permissions: str | None = Field(default=None, description=(
        "narrow what plugins are granted: 'name=perm,perm;other=' (a subset of what each "
        "declares; see worker.plugin.permissions)"))
    state_dir: Path = Field(default_factory=default_state_dir)
    embedded: str = Field(default="auto", pattern="^(auto|redis|filesystem)$")
    default_queue: str = "sandrun"
    max_attempts: int = Field(default=3, ge=1, description="deliveries before a job is failed")
    visibility_timeout: int = 7200
    max_job_timeout: float = Field(default=MAX_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS,
                                   allow_inf_nan=False, description=(
        "longest timeout (seconds) a job may ask for on this deployment; the client refuses "
        "a longer job at submit and a worker rejects it without running it"))
    visibility_margin: int = Field(default=VISIBILITY_MARGIN_SECONDS, ge=1, description=(
        "how far (seconds) the broker visibility timeout must exceed max_job_timeout, for "
        "the time a job waits between delivery and start and for storing its result"))
    gpus: Annotated[list[GPUCard] | None, NoDecode] = Field(default=None, description=(
        "the cards this worker advertises instead of those nvidia-smi finds: "
        "'a100:40:8.0:12.2*2,t4:16:7.5:12.0' (type:vram_gb:compute_capability:cuda_version"
        "*count) or a JSON list; see worker.models.gpus"))
    pricing: Pricing | None = None
    publish_retry_seconds: float = Field(default=10.0, ge=0)
    result_ttl: int = Field(default=RESULT_TTL_SECONDS, ge=1, description=(
        "seconds a job's result (and its state) is kept in the result backend; "
        "celeryconfig sets Celery's result_expires from the same variable"))
    output_ttl: int = Field(default=OUTPUT_TTL_SECONDS, ge=1, description=(
        "seconds a finished job's output files are kept for download (Redis)"))
    schedule_grace: float = Field(default=60.0, gt=0, allow_inf_nan=False, description=(
        "how late (seconds) sandrun beat still submits a periodic job's run; runs missed "
        "by more (every beat was down) are skipped, not backfilled"))
    dead_letter_ttl: int = Field(default=DEAD_LETTER_TTL_SECONDS, ge=1, description=(
        "seconds a dead letter (a job that exhausted its attempts, a bad message) is kept"))
    stream_cap_bytes: int = Field(default=1 << 20, ge=1024)
    live_output_bytes: int = Field(default=16 << 20, ge=0, description=(
        "bytes of a job's stdout/stderr streamed live per job (sandrun logs -f); past it "
        "a note says so and the rest is only counted. 0: no live output"))
    live_output_entries: int = Field(default=1000, ge=10, le=100_000, description=(
        "entries (chunks of at most 64 KiB) a job's live stream keeps, oldest trimmed"))
    live_output_ttl: int = Field(default=3600, ge=60, description=(
        "seconds a job's live stream is kept after its last write"))
    output_file_cap_bytes: int = Field(default=10 << 20, ge=0)
    output_total_cap_bytes: int = Field(default=50 << 20, ge=0)
    output_max_files: int = Field(default=1000, ge=0)
    output_max_depth: int = Field(default=32, ge=1, le=256)
    filesystem_isolation: str = Field(default="auto", pattern="^(auto|required|off)$", description=(
        "the job's own root, built by bubblewrap (only /usr, its directory, private /tmp, "
        "/proc and /dev); without bubblewrap, Landlock limits writes to its directory. auto "
        "uses what the host has; required refuses jobs (and worker start) without a view"))
    network_isolation: str = Field(default="auto", pattern="^(auto|required|off)$", description=(
        "an empty network namespace per job; auto where the host offers one"))
    allow_job_network: bool = Field(default=False, description=(
        "run jobs that ask for the network (Job.network) with the host's network; off: such "
        "jobs are refused"))
    seccomp: str = Field(default="auto", pattern="^(auto|required|off)$", description=(
        "a seccomp filter denying calls jobs never need (ptrace, mount, bpf, unshare...)"))
    cgroups: str = Field(default="auto", pattern="^(auto|required|off)$", description=(
        "memory limits as resident memory from a cgroup per pool process; else RLIMIT_AS"))
    job_uids: str = Field(default="200000-200999", description=(
        "uids a root worker runs jobs as, one per pool process at a time; empty: every job "
        "runs as SANDRUN_JOB_USER"))
    job_disk_mb: int = Field(default=256, ge=0, description=(
        "total disk a job may fill (a tmpfs job directory, root workers); 0: no cap"))
    job_tmp_mb: int = Field(default=64, ge=1, description="size of a job's private /tmp")
    workdir_root: Path | None = Field(default=None, description=(
        "where job directories are made (default: the system's temporary directory)"))
    max_processes: int = Field(default=256, ge=1, description=(
        "processes and threads one job may have at once (RLIMIT_NPROC in its own user "
        "namespace; without one, shared with the job user's other processes)"))
    job_user: str = Field(default="nobody", description=(
        "user (name or uid) a worker running as root runs jobs as; root keeps them root, "
        "without a process limit"))
    interpreters: list[str] | None = None
    environments_dir: Path | None = Field(default=None, description=(
        "a directory of operator-prepared environments (virtualenvs or interpreter "
        "prefixes, one subdirectory each, named by it) that jobs pick by 'environment'; "
        "unset: jobs naming one end environment_error"))
    wheel_cache: Path | None = Field(default=None, description=(
        "a directory of wheels jobs' 'requirements' are installed from (pip --no-index "
        "--find-links, wheels only); unset: jobs with requirements end environment_error"))
    layers_dir: Path | None = Field(default=None, description=(
        "where installed requirement sets are kept, one directory per set's SHA-256 "
        "(default: <system tmp>/sandrun-layers); job users must be able to traverse it"))

    @field_validator("gpus", mode="before")
    @classmethod
    def _declared_gpus(cls, value: Any) -> Any:
        """SANDRUN_GPUS in either form (:func:`worker.models.gpus.parse_gpus`)."""
        return parse_gpus(value) if isinstance(value, str) else value

    @field_validator("network_isolation", mode="before")
    @classmethod
    def _legacy_network(cls, value: object) -> object:
        """Accept the boolean values of earlier releases: true is required, false off."""
        text = str(value).lower()
        return {"true": "required", "1": "required", "false": "off", "0": "off"}.get(text, value)
    heartbeat_file: Path | None = Field(default=None, description="default: <state_dir>/"
                                        "health/<worker name>.heartbeat")
    ready_file: Path | None = Field(default=None, description="default: <state_dir>/health/"
                                    "<worker name>.ready")
    heartbeat_interval: float = Field(default=5.0, gt=0, description=(
        "seconds between a worker's heartbeats: its health file and its registry entry"))
    registry_ttl: float = Field(default=3600.0, gt=0, allow_inf_nan=False, description=(
        "seconds a worker that stopped beating (killed, hung, cut off) stays in the "
        "registry, listed as late by 'sandrun workers', before it is forgotten"))
    running_lease_seconds: float = Field(
        default=RUNNING_LEASE_SECONDS, ge=0, le=86400, allow_inf_nan=False, description=(
            "seconds a job's running lease lives past its last renewal (renewed every "
            "third of it while the job runs; worker.stores.leases): a second delivery of a "
            "running job waits instead of running. A worker cut off from Redis for less "
            f"than this runs its jobs once; at least {MIN_RUNNING_LEASE_SECONDS:g}, or 0 to "
            "turn leases off"))
    hook_timeout: float = Field(default=30.0, ge=0, allow_inf_nan=False, description=(
        "seconds a plugin hook call may run before it is abandoned and counted as a "
        "timeout, for plugins that set no hook_timeout of their own; 0: no limit"))

    @field_validator("running_lease_seconds")
    @classmethod
    def _lease_long_enough(cls, value: float) -> float:
        """0 (off) or at least MIN_RUNNING_LEASE_SECONDS."""
        if 0 < value < MIN_RUNNING_LEASE_SECONDS:
            raise ValueError(f"a running lease of {value:g}s leaves no time to renew it; use "
                             f"at least {MIN_RUNNING_LEASE_SECONDS:g} (default "
                             f"{RUNNING_LEASE_SECONDS:g}), or 0 to turn leases off")
        return value


def health_file(settings: Settings, kind: str, hostname: str | None = None) -> Path:
    """Where a worker keeps its ``heartbeat`` or ``ready`` file.

    The configured path, else one per worker name under the state directory; with
    no name given, the only such file there (a host running several workers must
    configure the paths or name one)."""
    configured = settings.heartbeat_file if kind == "heartbeat" else settings.ready_file
    if configured is not None:
        return configured
    folder = settings.state_dir / "health"
    if hostname is not None:
        return folder / f"{hostname}.{kind}"
    found = sorted(folder.glob(f"*.{kind}"))
    if len(found) > 1:
        raise ConfigurationError(f"{len(found)} workers keep {kind} files in {folder}; set "
                                 f"SANDRUN_{kind.upper()}_FILE to the one to check")
    return found[0] if found else folder / f"<none>.{kind}"


def file_age(path: Path) -> float | None:
    """Seconds since ``path`` was last touched, or None when it does not exist (how old
    a health file is; here rather than in ``worker.node.health`` so that the probes
    need not import Celery)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def load_settings() -> Settings:
    """Read the settings; a bad value is a ConfigurationError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  SANDRUN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                 for e in exc.errors()]
        raise ConfigurationError("invalid Sandrun settings:\n" + "\n".join(lines)) from None


def check_visibility_timeout(visibility_timeout: int, settings: Settings | None = None) -> None:
    """Refuse a visibility timeout that a long job could outlive (it would run twice):
    it must be at least ``max_job_timeout + visibility_margin``."""
    settings = settings or load_settings()
    longest, margin = settings.max_job_timeout, settings.visibility_margin
    need = math.ceil(longest + margin)
    if visibility_timeout < need:
        raise ConfigurationError(
            f"the broker visibility timeout is {visibility_timeout}s, but a job may run for "
            f"{longest:g}s (SANDRUN_MAX_JOB_TIMEOUT) and the margin is {margin}s "
            "(SANDRUN_VISIBILITY_MARGIN): an unacknowledged job would be delivered again "
            f"while it still runs. Set SANDRUN_VISIBILITY_TIMEOUT to at least {need}, or "
            "lower SANDRUN_MAX_JOB_TIMEOUT.")
