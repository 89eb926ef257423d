"""How a delivery ends that never runs its job: expired, cancelled, or not a valid job.

Each returns what :class:`~worker.node.taskbase.SandrunTask` hands Celery to store, so
that the job's status says why it did not run (``expired``, ``cancelled``,
``rejected``), never ``lost``.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from celery import Task
from pydantic import ValidationError

from worker.errors import InvalidJob
from worker.models import ErrorInfo, Execution, Job, JobContext, JobResult
from worker.models.context import EMPTY
from worker.node import runtime
from worker.node.lifecycle import error_info
from worker.plugin.context import ErrorContext
from worker.stores.deadletter import DeadLetter
from worker.stores.revoked import cancelled_result

RAW_LIMIT = 64 * 1024
log = structlog.get_logger("sandrun.task")


def expired(job: Job) -> JobResult:
    """A job delivered after its deadline is never run. Celery's ``expires`` stops
    most of them before this task is called; this catches a message that lost it (a
    hand-built publish, a broker writer's copy): the job's own deadline, checked after
    ``on_execute`` so that only a verified message (``auth``) can store a result."""
    assert job.deadline is not None
    log.info("job_expired", job_id=job.id, deadline=job.deadline.isoformat())
    return JobResult(id=job.id, status="expired", outcome="expired",
                     error=ErrorInfo(type="JobExpired", message=(
                         f"the job's deadline {job.deadline.isoformat()} passed before "
                         "it started")))

def cancelled(request: Any, execution: Execution) -> Any:
    """A delivery of a cancelled job (or of one of its replicas, or a cancelled user
    task) is never run, whoever started after the cancel: it stores the ``cancelled``
    JobResult, as ``cancel`` did (a user task's caller reads that dict)."""
    task_id = str(request.id)
    log.info("job_cancelled_skipped", task_id=task_id,
             job_id=execution.job.id if execution.job else task_id)
    return cancelled_result(task_id).model_dump(mode="json", exclude={"provenance"})

def invalid(task: Task[Any, Any], exc: Exception) -> dict[str, Any]:
    """A ``sandrun.run_job`` message whose payload is not a valid Job: rejected."""
    rt = runtime.current()
    task_id = str(task.request.id)
    if isinstance(exc, ValidationError):
        problems = [(".".join(map(str, e["loc"])) or "job", e["msg"]) for e in exc.errors()]
        error: Exception = InvalidJob(problems, source=f"job payload of task {task_id}")
    else:
        error = InvalidJob([("job", f"missing or malformed argument ({exc!r})")])
    log.error("job_payload_invalid", task_id=task_id, error=str(error))
    rt.manager.on_error(error, ErrorContext(operation="parse", task_id=task_id))
    if rt.manager.dead_letters is not None:
        travelled: JobContext = task.request.get("sandrun_context") or EMPTY
        rt.manager.dead_letters.add(DeadLetter(
            id=task_id, task=task.name, reason=str(error), source="broker",
            context=travelled if travelled != EMPTY else None,
            raw=json.dumps(task.request.args, default=str)[:RAW_LIMIT]))
    return JobResult(id=task_id, status="rejected", outcome="rejected",
                     error=error_info(error)).model_dump(mode="json")
