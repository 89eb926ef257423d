"""Health files for orchestrators: a heartbeat while a worker consumes, a readiness file
once it is connected, both removed on shutdown.

A consumer bootstep writes them from the consumer's own event loop, so a worker
whose loop hangs stops beating: Kubernetes (or anything else) can check
``sandrun probe live --max-age 30`` and ``sandrun probe ready``. When the broker
connection is lost, the consumer restarts and the readiness file goes away until
it is connected again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import bootsteps

from worker.settings import health_file, load_settings


def touch(path: Path) -> None:
    """Create or refresh ``path`` (its mtime is the heartbeat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path)


class HealthFiles(bootsteps.StartStopStep):
    """Consumer step: readiness once connected, a heartbeat every interval."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        settings = load_settings()
        self.heartbeat = health_file(settings, "heartbeat", str(parent.hostname))
        self.ready = health_file(settings, "ready", str(parent.hostname))
        self.interval = settings.heartbeat_interval
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        touch(self.heartbeat)
        touch(self.ready)
        self._timer = parent.timer.call_repeatedly(self.interval, touch, (self.heartbeat,),
                                                   priority=10)

    def stop(self, parent: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for path in (self.ready, self.heartbeat):
            path.unlink(missing_ok=True)

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
