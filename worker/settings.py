"""Sandrun's own settings (not Celery's), read from ``SANDRUN_*`` environment variables.

Celery settings live in ``celeryconfig.py``; these are what the producer client
and the worker runtime need on top: plugins, attempts, queues, GPUs, pricing and
sandbox caps. Complex values are JSON, e.g.
``SANDRUN_GPUS='[{"type": "a100", "count": 2}]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigurationError
from worker.gpu import GPUConfig
from worker.models import MAX_TIMEOUT_SECONDS
from worker.pricing import Pricing

#: The visibility timeout must exceed the longest job by at least this much.
VISIBILITY_MARGIN_SECONDS = 600


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
    state_dir: Path = Field(default_factory=default_state_dir)
    embedded: str = Field(default="auto", pattern="^(auto|redis|filesystem)$")
    default_queue: str = "sandrun"
    max_attempts: int = Field(default=3, ge=1, description="deliveries before a job is failed")
    visibility_timeout: int = 7200
    gpus: list[GPUConfig] | None = None
    pricing: Pricing | None = None
    publish_retry_seconds: float = Field(default=10.0, ge=0)
    stream_cap_bytes: int = Field(default=1 << 20, ge=1024)
    output_file_cap_bytes: int = Field(default=10 << 20, ge=0)
    output_total_cap_bytes: int = Field(default=50 << 20, ge=0)
    network_isolation: bool = False
    filesystem_isolation: str = Field(default="auto", pattern="^(auto|required|off)$", description=(
        "Landlock: jobs may change files only in their own directory; auto uses it where the "
        "kernel has it, required refuses jobs (and worker start) where it does not"))
    max_processes: int = Field(default=256, ge=1, description=(
        "processes and threads one job may have at once (RLIMIT_NPROC in its own user "
        "namespace; without one, shared with the job user's other processes)"))
    job_user: str = Field(default="nobody", description=(
        "user (name or uid) a worker running as root runs jobs as; root keeps them root, "
        "without a process limit"))
    interpreters: list[str] | None = None
    heartbeat_file: Path | None = Field(default=None, description="default: <state_dir>/"
                                        "health/<worker name>.heartbeat")
    ready_file: Path | None = Field(default=None, description="default: <state_dir>/health/"
                                    "<worker name>.ready")
    heartbeat_interval: float = Field(default=5.0, gt=0)
    hook_timeout: float = Field(default=30.0, ge=0, allow_inf_nan=False, description=(
        "seconds a plugin hook call may run before it is abandoned and counted as a "
        "timeout, for plugins that set no hook_timeout of their own; 0: no limit"))


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


def load_settings() -> Settings:
    """Read the settings; a bad value is a ConfigurationError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  SANDRUN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                 for e in exc.errors()]
        raise ConfigurationError("invalid Sandrun settings:\n" + "\n".join(lines)) from None


def check_visibility_timeout(visibility_timeout: int) -> None:
    """Refuse a visibility timeout that a long job could outlive (it would run twice)."""
    need = MAX_TIMEOUT_SECONDS + VISIBILITY_MARGIN_SECONDS
    if visibility_timeout < need:
        raise ConfigurationError(
            f"the broker visibility timeout is {visibility_timeout}s, but a job may run for "
            f"{MAX_TIMEOUT_SECONDS}s: an unacknowledged job would be delivered again while it "
            f"still runs. Set SANDRUN_VISIBILITY_TIMEOUT to at least {need}.")
