"""Per-process state of a worker pool process (or a producer): plugins, Redis, sandbox.

One :class:`Runtime` per process, created when the pool process starts
(``worker_process_init``) or lazily at its first task (solo and thread pools),
and closed when the process stops. It owns the process's PluginManager, whose
plugins get Redis-backed storage so the whole fleet shares their state.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis

from worker.broker.urls import redis_client
from worker.errors import ConfigurationError
from worker.models import WorkerInfo
from worker.plugin.loader import parse_plugin_specs
from worker.plugin.manager import PluginManager
from worker.plugin.permissions import parse_plugin_permissions
from worker.sandbox.config import check_sandbox, sandbox_config
from worker.sandbox.confine import IsolationError
from worker.sandbox.executor import SandboxConfig, release_slots
from worker.sandbox.gpu import GPUDevice, detect_gpus
from worker.settings import Settings, load_settings
from worker.stores.attempts import Attempts
from worker.stores.deadletter import dead_letter_store_for
from worker.stores.leases import Leases
from worker.stores.outputs import OutputStore, output_store_for
from worker.stores.revoked import Revocations
from worker.stores.storage import MemoryStorageBackend, RedisStorageBackend, StorageBackend


@dataclass
class Runtime:
    """What a process needs to run jobs and dispatch hooks."""

    settings: Settings
    manager: PluginManager
    attempts: Attempts
    outputs: OutputStore
    sandbox: SandboxConfig
    gpus: list[GPUDevice]
    node_id: str
    redis: redis.Redis[bytes] | None
    worker: WorkerInfo | None = None
    isolation: str = "process"  # what every job gets here (the start-up check's label)
    sandbox_notes: tuple[str, ...] = ()  # what the host lacks, and why
    #: cancelled jobs, remembered in the result backend's Redis
    revocations: Revocations = field(default_factory=lambda: Revocations(None, 1))
    #: jobs' running leases (off: no Redis, or SANDRUN_RUNNING_LEASE_SECONDS=0)
    leases: Leases = field(default_factory=lambda: Leases(None, 1))

    @property
    def lock_dir(self) -> Path:
        """Where GPU lock files live (one directory per host)."""
        return self.settings.state_dir / "gpu-locks"


def store_url(settings: Settings) -> str:
    """The URL of the Redis (or other store) that results, attempts and leases live in:
    the result backend, else the broker."""
    broker = os.environ.get("SANDRUN_BROKER_URL", settings.broker_url or "")
    return os.environ.get("SANDRUN_RESULT_BACKEND") or settings.result_backend or broker


def build_runtime(settings: Settings | None = None, *, load_plugins: bool = True) -> Runtime:
    """Create the runtime from settings and load the configured plugins (``on_init``)."""
    settings = settings or load_settings()
    backend = store_url(settings)
    client = redis_client(backend)
    storage: StorageBackend = RedisStorageBackend(client) if client else MemoryStorageBackend()
    manager = PluginManager(storage=storage, dead_letters=dead_letter_store_for(
                                backend, ttl=settings.dead_letter_ttl),
                            hook_timeout=settings.hook_timeout,
                            permissions=parse_plugin_permissions(settings.plugin_permissions))
    if load_plugins:
        manager.load_all(parse_plugin_specs(settings.plugins))
    sandbox = sandbox_config(settings)
    try:  # probes the host once, so that a worker that would refuse every job does not start
        isolation, notes = check_sandbox(sandbox)
    except IsolationError as exc:
        raise ConfigurationError(f"the sandbox cannot run jobs as configured: {exc}") from None
    outputs = output_store_for(backend, settings.output_ttl)
    return Runtime(settings, manager, Attempts(client), outputs, sandbox,
                   detect_gpus(settings.gpus), socket.gethostname(), client,
                   isolation=isolation, sandbox_notes=notes,
                   revocations=Revocations(client, settings.result_ttl),
                   leases=Leases(client if settings.running_lease_seconds else None,
                                 settings.running_lease_seconds or 1))


class _ProcessRuntime:
    """The runtime of this process, rebuilt in a forked child."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.pid = 0
        self.lock = threading.Lock()


_this = _ProcessRuntime()


def start() -> Runtime:
    """Create this process's runtime (called when a pool process starts)."""
    with _this.lock:
        if _this.runtime is None or _this.pid != os.getpid():
            _this.runtime = build_runtime()
            _this.pid = os.getpid()
        return _this.runtime


def active() -> Runtime | None:
    """This process's runtime if it has one (never creates it)."""
    return _this.runtime if _this.pid == os.getpid() else None


def current() -> Runtime:
    """This process's runtime, created on first use (a forked child builds its own)."""
    rt = _this.runtime
    if rt is not None and _this.pid == os.getpid():
        return rt
    return start()


def stop() -> None:
    """Close this process's runtime: ``on_destroy`` for every plugin."""
    with _this.lock:
        if _this.runtime is not None and _this.pid == os.getpid():
            _this.runtime.manager.close()
            release_slots()
        _this.runtime = None
