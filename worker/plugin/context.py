"""Typed contexts handed to hooks next to the data they act on.

A hook receives ``(data, context)``. The data is what a hook may replace (a Job,
a JobResult, an exception); the context says where and when it is happening and
is never replaced. ``job_id`` is on every context so that a failing hook can be
logged with the job it was working on. ``provenance`` (submission, publish,
execution and result contexts) lists the hook calls that changed the data so far
(:mod:`worker.plugin.provenance`); the manager appends to it, plugins read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from structlog.typing import FilteringBoundLogger

    from worker.collector import MetricsCollector
    from worker.models import Execution, Job, Transform
    from worker.plugin.impl import HookTimer
    from worker.stores.deadletter import DeadLetterStore
    from worker.stores.ops import Set
    from worker.stores.storage import PluginStorage
    from worker.tracing import Tracer


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class PluginContext:
    """Given to ``on_init``: the plugin's validated config and its own tools.

    ``dead_letters`` is where jobs that will not run again go (None in a process
    without a store); ``install_metrics`` replaces the collector the host and every
    plugin record into (``metrics`` follows it, whenever the plugin was loaded);
    ``time_hooks`` asks for every hook's duration; ``install_tracer`` gives the host a
    :class:`~worker.tracing.Tracer` for its spans (submission, hook chains, sandbox)."""

    name: str
    config: Any
    logger: FilteringBoundLogger
    metrics: MetricsCollector
    storage: PluginStorage
    dead_letters: DeadLetterStore | None = None
    install_metrics: Callable[[MetricsCollector], None] | None = None
    time_hooks: Callable[[HookTimer | None], None] | None = None
    install_tracer: Callable[[Tracer | None], None] | None = None


@dataclass(slots=True)
class WorkerContext:
    """Given to ``on_worker_start``/``on_worker_stop`` in a worker's main process."""

    hostname: str
    pid: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BuildContext:
    """Given to ``on_build`` when a client makes a job builder."""

    client: str = "sandrun"
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None


@dataclass(slots=True)
class SubmissionContext:
    """Given to ``on_submit`` in the producer, before the job is published.

    ``headers`` become headers of the message; ``metadata`` is handed on to the
    message's :class:`PublishContext`, so a plugin can carry a decision from
    ``on_submit`` to ``on_publish``. ``correlation_id`` (the caller's, or a new one),
    ``tenant`` (the caller's; None lets the job's ``tenant`` label name it, when that is
    a valid tenant) and ``baggage`` travel to the worker as the job's
    :class:`~worker.models.JobContext`; a hook may change them, and they are validated
    after the chain (an invalid value fails the submit)."""

    submitted_at: datetime = field(default_factory=_now)
    producer: str = ""
    queue: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    duration: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    provenance: list[Transform] = field(default_factory=list)
    correlation_id: str | None = None
    tenant: str | None = None
    baggage: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PublishContext:
    """Given to ``on_publish`` with the final :class:`~worker.protocol.Publication`.

    ``job`` is the Job the message carries, as every ``on_submit`` hook left it (None
    for a message of another task); ``metadata`` is the submission's own dict (the
    same object as its SubmissionContext's), ``producer`` who publishes it."""

    job: Job | None = None
    producer: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    provenance: list[Transform] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.job_id is None and self.job is not None:
            self.job_id = self.job.id


@dataclass(slots=True)
class ExecutionContext:
    """Given to ``on_execute`` in the worker pool process that is about to run the job.

    ``headers`` (the message's custom headers), ``args``/``kwargs`` (its body as
    received), ``eta`` and ``redelivered`` describe the message itself, for plugins
    that check it (authentication). They are the sender's word, like ``attempt``
    (Celery's ``retries`` + 1) and ``queue`` (the routing key): whoever can write to
    the broker sets them, so a check may refuse because of them, never accept.
    ``correlation_id``, ``tenant`` and ``baggage`` are the job's context from its
    headers (validated, and covered by the signature where the ``auth`` plugin is on)."""

    node_id: str
    pool_id: str
    task_id: str
    attempt: int = 1
    queue: str | None = None
    started_at: datetime = field(default_factory=_now)
    submitted_at: datetime | None = None
    deliveries: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: str | None = None
    redelivered: bool = False
    consumed_queues: tuple[str, ...] = ()
    provenance: list[Transform] = field(default_factory=list)
    correlation_id: str | None = None
    tenant: str | None = None
    baggage: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ResultContext:
    """Given to ``on_result`` before the result is stored.

    ``result_writes`` is set by a host that stores the result in the same Redis as
    plugin storage (a worker's task adapter): :meth:`store_with_result` collects there."""

    node_id: str
    task_id: str
    attempt: int = 1
    job: Job | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    provenance: list[Transform] = field(default_factory=list)
    result_writes: list[tuple[PluginStorage, Set]] | None = None

    def __post_init__(self) -> None:
        if self.job_id is None and self.job is not None:
            self.job_id = self.job.id

    def store_with_result(self, storage: PluginStorage, write: Set) -> None:
        """Apply ``write`` to ``storage`` as the result is stored: in the same atomic
        step and round trip where the host can (so a crash never leaves one without the
        other), else now, as ``storage.set`` would (StorageError included).
        For records that mean "this job has its result", such as a finished nonce."""
        if self.result_writes is None:
            storage.set(write.key, write.value, write.ttl)
        else:
            self.result_writes.append((storage, write))


@dataclass(slots=True)
class ErrorContext:
    """Given to ``on_error``: which operation failed, on which attempt, for which job."""

    operation: str
    attempt: int = 1
    job: Job | None = None
    task_id: str | None = None
    execution: Execution | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None

    def __post_init__(self) -> None:
        if self.job_id is None and self.job is not None:
            self.job_id = self.job.id
