"""What a delivery's request tells: the job's context from its headers, what
``on_execute`` is told, and the log context of its end events.

Everything here is read from Celery's request (``task.request``) of one delivery of a
:class:`~worker.node.taskbase.SandrunTask`; headers are a broker writer's, so each one is
checked, and one that is not valid is dropped and logged by name, never trusted.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from celery import Task

from worker.broker.amqp import delivered_queue
from worker.models import Execution, JobContext
from worker.models.context import EMPTY
from worker.node import runtime
from worker.plugin.context import ExecutionContext
from worker.plugin.provenance import PROVENANCE_HEADER, from_header
from worker.protocol import SUBMITTED_HEADER, context_from_headers
from worker.stores.attempts import Attempt

log = structlog.get_logger("sandrun.task")


def travelled(request: Any) -> JobContext:
    """The job's context from the message's headers (kept on the request for the log
    events of its end); a header that is not valid is dropped and logged, by name."""
    travelled, problems = context_from_headers(request.headers or {})
    for problem in problems:
        log.warning("job_context_dropped", task_id=str(request.id), problem=problem)
    request.update(sandrun_context=travelled)
    return travelled

def delivery_context(task: Task[Any, Any], rt: runtime.Runtime, execution: Execution,
                     attempt: Attempt, travelled: JobContext) -> ExecutionContext:
    """What ``on_execute`` is told about this delivery of ``task`` and its message."""
    request = task.request
    delivery = request.delivery_info or {}
    submitted = getattr(request, SUBMITTED_HEADER, None)
    return ExecutionContext(
        node_id=str(request.hostname or rt.node_id), pool_id=str(os.getpid()),
        task_id=attempt.task_id, attempt=attempt.number, deliveries=attempt.deliveries,
        queue=delivered_queue(delivery),
        submitted_at=datetime.fromtimestamp(float(submitted), UTC) if submitted else None,
        job_id=execution.job.id if execution.job else None,
        headers=dict(request.headers or {}), args=list(request.args or ()),
        kwargs=dict(request.kwargs or {}), eta=str(request.eta) if request.eta else None,
        redelivered=bool(delivery.get("redelivered")),
        consumed_queues=consumed_queues(task.app), correlation_id=travelled.correlation_id,
        tenant=travelled.tenant, baggage=dict(travelled.baggage),
        provenance=provenance(getattr(request, PROVENANCE_HEADER, None)))

def provenance(raw: Any) -> list[Any]:
    """The producer's record of the plugins that changed the job (the sender's word:
    a record, never a control); a malformed one is dropped and logged."""
    if raw is None:
        return []
    entries = from_header(raw)
    if entries is None:
        log.warning("provenance_header_dropped", size=len(str(raw)))
        return []
    return list(entries)

def consumed_queues(app: Any) -> tuple[str, ...]:
    """The queues this worker consumes (its own -Q, or every declared queue): unlike
    the message's routing key, nothing a broker writer sends can change them."""
    queues = app.amqp.queues
    return tuple(sorted(queues.consume_from or queues))


def where(request: Any) -> dict[str, Any]:
    """The log context of this delivery, as :func:`run_lifecycle` binds it."""
    task_id = str(request.id)
    travelled: JobContext = request.get("sandrun_context") or EMPTY
    return {"job_id": request.get("sandrun_job_id") or task_id, "task_id": task_id,
            "attempt": int(request.retries or 0) + 1,
            "queue": delivered_queue(request.delivery_info),
            "node": request.hostname, **travelled.log_fields()}

def wall(request: Any) -> float | None:
    """Seconds since this delivery reached the task, to its outcome stored."""
    started = request.get("sandrun_started")
    return None if started is None else round(time.monotonic() - started, 6)
