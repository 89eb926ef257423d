"""Health files for orchestrators: a heartbeat while a worker consumes, a readiness file
once it is connected, both removed on shutdown; and the same heartbeat in the worker
registry (:mod:`worker.stores.registry`), with the jobs it runs, for ``sandrun workers``.

A consumer bootstep writes them from the consumer's own event loop, so a worker
whose loop hangs stops beating: Kubernetes (or anything else) can check
``sandrun probe live --max-age 30`` and ``sandrun probe ready``. When the broker
connection is lost, the consumer restarts and the readiness file goes away until
it is connected again.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import redis
import structlog
from celery import bootsteps
from celery.worker import state

from worker.node import runtime
from worker.settings import Settings, health_file, load_settings
from worker.stores import registry

log = structlog.get_logger("sandrun.worker")


def touch(path: Path) -> None:
    """Create or refresh ``path`` (its mtime is the heartbeat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path)


def advertise(settings: Settings) -> None:
    """Refresh this worker's registry entry and heartbeat (its host and how many jobs
    its pool runs now), when it has a registry. A Redis that cannot be reached is
    logged, never raised: the consumer's loop must go on (and reconnects on its own)."""
    rt = runtime.active()
    if rt is None or rt.redis is None or rt.worker is None:
        return
    heartbeat = registry.Heartbeat(host=socket.gethostname(),
                                   running=len(state.active_requests),
                                   interval=settings.heartbeat_interval,
                                   ttl=max(settings.registry_ttl, settings.heartbeat_interval))
    try:
        registry.beat(rt.redis, rt.worker, heartbeat)
    except redis.RedisError as exc:
        log.warning("heartbeat_not_advertised", error=repr(exc))


def beat(path: Path, settings: Settings) -> None:
    """One heartbeat: the health file, then the registry."""
    touch(path)
    advertise(settings)


class HealthFiles(bootsteps.StartStopStep):
    """Consumer step: readiness once connected, a heartbeat every interval."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        self.settings = settings = load_settings()
        self.heartbeat = health_file(settings, "heartbeat", str(parent.hostname))
        self.ready = health_file(settings, "ready", str(parent.hostname))
        self.interval = settings.heartbeat_interval
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        beat(self.heartbeat, self.settings)
        touch(self.ready)
        self._timer = parent.timer.call_repeatedly(self.interval, beat,
                                                   (self.heartbeat, self.settings), priority=10)

    def stop(self, parent: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for path in (self.ready, self.heartbeat):
            path.unlink(missing_ok=True)

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
