"""Sandrun worker: a plugin-driven Celery worker for untrusted compute jobs.

This is the public face: everything a plugin or a producer needs is importable
from ``worker`` itself (the built-in plugins import nothing else). The wings
behind it are described in ``docs/architecture.md``.

Every public name is imported on first use (PEP 562 ``__getattr__``), so
``import worker`` imports nothing but this file, a plugin package importing
``worker.Plugin`` does not pay for Celery or the client, and ``sandrun --help``
does not pay for the models. ``celery -A worker`` finds the Celery app as
``worker.app``, which imports ``worker.node.app`` then. The ``TYPE_CHECKING``
block below is the same list for mypy and for readers; ``tests/worker/
test_public.py`` keeps the two and ``__all__`` in step.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy and readers see; at run time __getattr__ imports these
    from celery import Celery

    from worker.broker.amqp import queue_depth
    from worker.broker.embedded import ensure_broker_configured
    from worker.broker.factory import make_app
    from worker.broker.publisher import Publisher
    from worker.broker.urls import is_amqp, is_redis, kombu_url, redis_client, redis_url
    from worker.cli.common import fail as cli_fail
    from worker.client.client import JobExecution, Sandrun
    from worker.client.follow import LogLine
    from worker.client.schedules import ScheduleRunner
    from worker.collector import InMemoryMetrics, MetricsCollector
    from worker.errors import (
        BrokerUnavailable,
        ConfigurationError,
        ConsensusUnavailable,
        DuplicateDelivery,
        GPUUnavailable,
        InvalidJob,
        JobDeferred,
        JobFailed,
        JobRejected,
        PaymentRejected,
        PermissionRefused,
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
        ConsensusSummary,
        Cost,
        ErrorInfo,
        Execution,
        Job,
        JobContext,
        JobResult,
        Progress,
        ReplicaVote,
        RetryPolicy,
        Transform,
        WorkerInfo,
        current_job_context,
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
    from worker.plugin.permissions import parse_plugin_permissions
    from worker.plugin.spec import Plugin, PluginDependency, PluginManifest, hook
    from worker.protocol import (
        CONTEXT_HEADERS,
        RUN_JOB,
        SUBMITTED_HEADER,
        TENANT_HEADER,
        Publication,
        consensus_round,
        job_queue,
        replica_index,
        replica_task_id,
    )
    from worker.settings import Settings, load_settings
    from worker.stores.deadletter import DeadLetter, DeadLetterStore
    from worker.stores.ops import Get, Incr, Set, SetDefault
    from worker.stores.revoked import Revocations, cancelled_result, revocations_for
    from worker.stores.storage import (
        MemoryStorageBackend,
        PluginStorage,
        RedisStorageBackend,
    )

    app: Celery
    celery: Celery

__all__ = [
    "CONTEXT_HEADERS",
    "LEVELS",
    "MAX_CPU_SECONDS",
    "MAX_MEMORY_MB",
    "MAX_TIMEOUT_SECONDS",
    "RUN_JOB",
    "SUBMITTED_HEADER",
    "TENANT_HEADER",
    "BasePlugin",
    "BrokerUnavailable",
    "BuildContext",
    "ConfigurationError",
    "ConsensusSummary",
    "ConsensusUnavailable",
    "Cost",
    "DeadLetter",
    "DeadLetterStore",
    "DuplicateDelivery",
    "ErrorContext",
    "ErrorInfo",
    "Execution",
    "ExecutionContext",
    "GPUUnavailable",
    "Get",
    "HookImpl",
    "InMemoryMetrics",
    "Incr",
    "InvalidJob",
    "Job",
    "JobBuilder",
    "JobContext",
    "JobDeferred",
    "JobExecution",
    "JobFailed",
    "JobRejected",
    "JobResult",
    "LogLine",
    "MemoryStorageBackend",
    "MetricsCollector",
    "PaymentRejected",
    "PermissionRefused",
    "Plugin",
    "PluginContext",
    "PluginDependency",
    "PluginError",
    "PluginEvent",
    "PluginManager",
    "PluginManifest",
    "PluginSpec",
    "PluginStorage",
    "Progress",
    "Publication",
    "PublicationHeld",
    "PublishContext",
    "Publisher",
    "QueueFull",
    "RedisStorageBackend",
    "ReplicaVote",
    "ResultContext",
    "RetryPolicy",
    "RetryRequested",
    "Revocations",
    "Sandrun",
    "SandrunError",
    "ScheduleRunner",
    "Set",
    "SetDefault",
    "Settings",
    "StartupRefused",
    "StorageError",
    "SubmissionContext",
    "SubmissionRejected",
    "Transform",
    "WorkerContext",
    "WorkerInfo",
    "cancelled_result",
    "cli_fail",
    "configure_logging",
    "consensus_round",
    "current_job_context",
    "ensure_broker_configured",
    "hook",
    "is_amqp",
    "is_redis",
    "job_queue",
    "kombu_url",
    "load_settings",
    "make_app",
    "parse_plugin_permissions",
    "parse_plugin_specs",
    "queue_depth",
    "redis_client",
    "redis_url",
    "replica_index",
    "replica_task_id",
    "revocations_for",
    "with_logging",
    "with_metrics",
]

#: Where each public name lives, imported on first use by ``__getattr__``.
_SOURCES: dict[str, tuple[str, ...]] = {
    "worker.broker.amqp": ("queue_depth",),
    "worker.broker.embedded": ("ensure_broker_configured",),
    "worker.broker.factory": ("make_app",),
    "worker.broker.publisher": ("Publisher",),
    "worker.broker.urls": ("is_amqp", "is_redis", "kombu_url", "redis_client", "redis_url"),
    "worker.client.client": ("JobExecution", "Sandrun"),
    "worker.client.follow": ("LogLine",),
    "worker.client.schedules": ("ScheduleRunner",),
    "worker.collector": ("InMemoryMetrics", "MetricsCollector"),
    "worker.errors": (
        "BrokerUnavailable", "ConfigurationError", "ConsensusUnavailable", "DuplicateDelivery",
        "GPUUnavailable", "InvalidJob", "JobDeferred", "JobFailed", "JobRejected",
        "PaymentRejected", "PermissionRefused", "PluginError",
        "PublicationHeld", "QueueFull", "RetryRequested", "SandrunError", "StartupRefused",
        "StorageError", "SubmissionRejected"),
    "worker.logs": ("LEVELS", "configure_logging"),
    "worker.models": (
        "MAX_CPU_SECONDS", "MAX_MEMORY_MB", "MAX_TIMEOUT_SECONDS", "ConsensusSummary", "Cost",
        "ErrorInfo", "Execution", "Job", "JobContext", "JobResult", "Progress",
        "ReplicaVote", "RetryPolicy", "Transform", "WorkerInfo", "current_job_context"),
    "worker.models.builder": ("JobBuilder",),
    "worker.plugin.context": (
        "BuildContext", "ErrorContext", "ExecutionContext", "PluginContext", "PublishContext",
        "ResultContext", "SubmissionContext", "WorkerContext"),
    "worker.plugin.helpers": ("BasePlugin", "with_logging", "with_metrics"),
    "worker.plugin.impl": ("HookImpl",),
    "worker.plugin.loader": ("PluginSpec", "parse_plugin_specs"),
    "worker.plugin.manager": ("PluginEvent", "PluginManager"),
    "worker.plugin.permissions": ("parse_plugin_permissions",),
    "worker.plugin.spec": ("Plugin", "PluginDependency", "PluginManifest", "hook"),
    "worker.protocol": ("CONTEXT_HEADERS", "RUN_JOB", "SUBMITTED_HEADER", "TENANT_HEADER",
                        "Publication", "job_queue", "consensus_round", "replica_index",
                        "replica_task_id"),
    "worker.settings": ("Settings", "load_settings"),
    "worker.stores.deadletter": ("DeadLetter", "DeadLetterStore"),
    "worker.stores.ops": ("Get", "Incr", "Set", "SetDefault"),
    "worker.stores.revoked": ("Revocations", "cancelled_result", "revocations_for"),
    "worker.stores.storage": ("MemoryStorageBackend", "PluginStorage", "RedisStorageBackend"),
}
#: public name -> (module, attribute); ``app`` and ``celery`` are what ``celery -A worker``
#: looks up (in that order), both the app of ``worker.node.app``.
_LAZY: dict[str, tuple[str, str]] = {
    **{name: (module, name) for module, names in _SOURCES.items() for name in names},
    "cli_fail": ("worker.cli.common", "fail"),
    "app": ("worker.node.app", "app"),
    "celery": ("worker.node.app", "app"),
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it, so that ``import worker``
    costs nothing and each caller pays only for the wings it touches."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'worker' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
