"""Sandrun worker: a plugin-driven Celery worker for untrusted compute jobs.

The public API for plugin authors and producers is re-exported here. The Celery
app (``worker.app``) is imported lazily, so a plugin package importing
``worker.Plugin`` does not pay for importing Celery; ``celery -A worker``
still finds it.
"""

from __future__ import annotations

from typing import Any

from worker.builder import JobBuilder
from worker.collector import InMemoryMetrics, MetricsCollector
from worker.context import (
    BuildContext,
    ErrorContext,
    ExecutionContext,
    PluginContext,
    ResultContext,
    SubmissionContext,
)
from worker.errors import JobRejected, SandrunError, SubmissionRejected
from worker.helpers import BasePlugin, with_logging, with_metrics
from worker.loader import PluginSpec
from worker.manager import PluginEvent, PluginManager
from worker.models import Job, JobResult
from worker.spec import Plugin, PluginDependency, PluginManifest, hook
from worker.storage import (
    MemoryStorageBackend,
    PluginStorage,
    RedisStorageBackend,
)

__all__ = [
    "BasePlugin",
    "BuildContext",
    "ErrorContext",
    "ExecutionContext",
    "InMemoryMetrics",
    "Job",
    "JobBuilder",
    "JobRejected",
    "JobResult",
    "MemoryStorageBackend",
    "MetricsCollector",
    "Plugin",
    "PluginContext",
    "PluginDependency",
    "PluginEvent",
    "PluginManager",
    "PluginManifest",
    "PluginSpec",
    "PluginStorage",
    "RedisStorageBackend",
    "ResultContext",
    "SandrunError",
    "SubmissionContext",
    "SubmissionRejected",
    "hook",
    "with_logging",
    "with_metrics",
]


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from worker.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
