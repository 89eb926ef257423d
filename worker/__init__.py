"""Sandrun worker: a plugin-driven Celery worker for untrusted compute jobs.

This is the public face: everything a plugin or a producer needs is importable
from ``worker`` itself (the built-in plugins import nothing else). The wings
behind it are described in ``docs/architecture.md``.

The client (``Sandrun``, ``JobExecution``), the app factory (``make_app``) and the
Celery app (``worker.app``) are imported lazily, so a plugin package importing
``worker.Plugin`` does not pay for importing Celery; ``celery -A worker`` still
finds the app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from worker.broker.embedded import ensure_broker_configured
from worker.broker.publisher import Publisher
from worker.broker.urls import is_redis, kombu_url, redis_client, redis_url
from worker.collector import InMemoryMetrics, MetricsCollector
from worker.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DuplicateDelivery,
    InvalidJob,
    JobDeferred,
    JobFailed,
    JobRejected,
    PaymentRejected,
    PluginError,
    PublicationHeld,
    QueueFull,
    RetryRequested,
    SandrunError,
    StartupRefused,
    StorageError,
    SubmissionRejected,
)
from worker.logs import LEVELS, configure_logging
from worker.models import (
    MAX_CPU_SECONDS,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_SECONDS,
    ErrorInfo,
    Execution,
    Job,
    JobResult,
    RetryPolicy,
    WorkerInfo,
)
from worker.models.builder import JobBuilder
from worker.plugin.context import (
    BuildContext,
    ErrorContext,
    ExecutionContext,
    PluginContext,
    PublishContext,
    ResultContext,
    SubmissionContext,
    WorkerContext,
)
from worker.plugin.helpers import BasePlugin, with_logging, with_metrics
from worker.plugin.impl import HookImpl
from worker.plugin.loader import PluginSpec, parse_plugin_specs
from worker.plugin.manager import PluginEvent, PluginManager
from worker.plugin.spec import Plugin, PluginDependency, PluginManifest, hook
from worker.protocol import RUN_JOB, SUBMITTED_HEADER, Publication, job_queue
from worker.settings import Settings, load_settings
from worker.stores.deadletter import DeadLetter, DeadLetterStore
from worker.stores.ops import Get, Incr, Set, SetDefault
from worker.stores.storage import (
    MemoryStorageBackend,
    PluginStorage,
    RedisStorageBackend,
)

if TYPE_CHECKING:
    from celery import Celery

    from worker.broker.factory import make_app
    from worker.cli.common import fail as cli_fail
    from worker.client.client import JobExecution, Sandrun

    app: Celery

__all__ = [
    "LEVELS",
    "MAX_CPU_SECONDS",
    "MAX_MEMORY_MB",
    "MAX_TIMEOUT_SECONDS",
    "RUN_JOB",
    "SUBMITTED_HEADER",
    "BasePlugin",
    "BrokerUnavailable",
    "BuildContext",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterStore",
    "DuplicateDelivery",
    "ErrorContext",
    "ErrorInfo",
    "Execution",
    "ExecutionContext",
    "Get",
    "HookImpl",
    "InMemoryMetrics",
    "Incr",
    "InvalidJob",
    "Job",
    "JobBuilder",
    "JobDeferred",
    "JobExecution",
    "JobFailed",
    "JobRejected",
    "JobResult",
    "MemoryStorageBackend",
    "MetricsCollector",
    "PaymentRejected",
    "Plugin",
    "PluginContext",
    "PluginDependency",
    "PluginError",
    "PluginEvent",
    "PluginManager",
    "PluginManifest",
    "PluginSpec",
    "PluginStorage",
    "Publication",
    "PublicationHeld",
    "PublishContext",
    "Publisher",
    "QueueFull",
    "RedisStorageBackend",
    "ResultContext",
    "RetryPolicy",
    "RetryRequested",
    "Sandrun",
    "SandrunError",
    "Set",
    "SetDefault",
    "Settings",
    "StartupRefused",
    "StorageError",
    "SubmissionContext",
    "SubmissionRejected",
    "WorkerContext",
    "WorkerInfo",
    "cli_fail",
    "configure_logging",
    "ensure_broker_configured",
    "hook",
    "is_redis",
    "job_queue",
    "kombu_url",
    "load_settings",
    "make_app",
    "parse_plugin_specs",
    "redis_client",
    "redis_url",
    "with_logging",
    "with_metrics",
]

#: Names imported on first use, because their modules import Celery.
_LAZY = {"Sandrun": ("worker.client.client", "Sandrun"),
         "JobExecution": ("worker.client.client", "JobExecution"),
         "make_app": ("worker.broker.factory", "make_app"),
         "cli_fail": ("worker.cli.common", "fail"),
         "app": ("worker.node.app", "app"), "celery": ("worker.node.app", "app")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
