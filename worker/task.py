"""The task base class of the Sandrun Celery app: where worker-side hooks run.

Every task of the app (``sandrun.run_job`` and users' own ``@app.task``
functions) runs through :meth:`SandrunTask.__call__`, which dispatches, in the
pool process that runs the task:

1. the attempt counter (a delivery past ``SANDRUN_MAX_ATTEMPTS`` is failed, not run);
2. idempotent completion (a task id that already has a stored result is not run again);
3. ``on_execute`` (``JobRejected`` stops the task: status rejected, never run);
4. the task body; an exception goes through ``on_error`` and is re-raised
   (replaced if a hook returned a replacement);
5. ``on_result``, whose return value is what gets stored; a job that did not
   complete also goes through ``on_error`` as :class:`~worker.errors.JobFailed`.

Celery signals cannot change a result or stop a task, so these hooks are here;
process start/stop hooks are bridged in :mod:`worker.signals`.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, Terminated
from pydantic import ValidationError

from worker import runtime
from worker.context import ErrorContext, ExecutionContext, ResultContext
from worker.errors import InvalidJob, JobFailed, JobRejected
from worker.models import ErrorInfo, Execution, Job, JobResult

RUN_JOB = "sandrun.run_job"
EXECUTION_ATTR = "sandrun_execution"
CELERY_CONTROL = (Ignore, Reject, Retry, SoftTimeLimitExceeded, Terminated)
log = structlog.get_logger("sandrun.task")


def error_info(exc: BaseException) -> ErrorInfo:
    """The stored form of an exception."""
    return ErrorInfo(type=type(exc).__name__, message=str(exc))


class SandrunTask(Task[Any, Any]):
    """Base class of every task of the app; see the module docstring for the order."""

    def _execution(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Execution:
        job = Job.model_validate(args[0] if args else kwargs["job"]) if self.name == RUN_JOB \
            else None
        return Execution(task=self.name, task_id=self.request.id, job=job,
                         task_args=[] if job else list(args),
                         task_kwargs={} if job else dict(kwargs))

    def _begin(self, rt: runtime.Runtime, task_id: str) -> tuple[int, Any]:
        """Count this delivery and fetch a stored final result, in one round trip
        when results live in the same Redis as the counter."""
        key_for = getattr(self.backend, "get_key_for_task", None)
        key = key_for(task_id).decode() if rt.redis is not None and key_for else None
        attempt, raw = rt.attempts.begin(task_id, key)
        if key is None:
            meta = self.backend.get_task_meta(task_id)
        else:
            meta = self.backend.decode_result(raw) if raw else {}
        return attempt, meta.get("result") if meta.get("status") == "SUCCESS" else None

    def _invalid(self, exc: Exception) -> dict[str, Any]:
        """A ``sandrun.run_job`` message whose payload is not a valid Job: rejected."""
        rt = runtime.current()
        task_id = str(self.request.id)
        if isinstance(exc, ValidationError):
            problems = [(".".join(map(str, e["loc"])) or "job", e["msg"]) for e in exc.errors()]
            error: Exception = InvalidJob(problems, source=f"job payload of task {task_id}")
        else:
            error = InvalidJob([("job", f"missing or malformed argument ({exc!r})")])
        log.error("job_payload_invalid", task_id=task_id, error=str(error))
        rt.manager.execute_hook("on_error", error, ErrorContext(operation="parse",
                                                                task_id=task_id))
        return JobResult(id=task_id, status="rejected", outcome="rejected",
                         error=error_info(error)).model_dump(mode="json")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = runtime.current()
        try:
            execution = self._execution(args, kwargs)
        except (ValidationError, KeyError, IndexError, TypeError) as exc:
            return self._invalid(exc)
        job = execution.job
        task_id = str(self.request.id)
        delivery = self.request.delivery_info or {}
        attempt, stored = self._begin(rt, task_id)
        ctx = ExecutionContext(node_id=str(self.request.hostname or rt.node_id),
                               pool_id=str(os.getpid()), task_id=task_id, attempt=attempt,
                               queue=delivery.get("routing_key"), job_id=job.id if job else None)
        if stored is not None:
            return stored
        if ctx.attempt > rt.settings.max_attempts:
            result = JobResult(id=job.id if job else task_id, status="failed",
                               outcome="worker_lost", attempts=ctx.attempt - 1,
                               error=ErrorInfo(type="WorkerLost", message=(
                                   f"the task was delivered {ctx.attempt - 1} times and its "
                                   "worker process died each time; not running it again")))
            return self._finish(result, execution, ctx, ran=False)
        try:
            rt.manager.execute_hook("on_execute", execution, ctx)
        except JobRejected as exc:
            result = JobResult(id=job.id if job else task_id, status="rejected",
                               outcome="rejected", attempts=ctx.attempt, error=error_info(exc))
            return self._finish(result, execution, ctx, ran=False)
        setattr(self.request, EXECUTION_ATTR, execution)  # the body reuses the parsed Job
        try:
            value = self.run(*args, **kwargs)
        except CELERY_CONTROL:
            raise
        except Exception as exc:
            replaced = rt.manager.execute_hook(
                "on_error", exc, ErrorContext(operation="execute", attempt=ctx.attempt, job=job,
                                              task_id=task_id))
            rt.attempts.finish(task_id)
            if replaced is not exc and isinstance(replaced, BaseException):
                raise replaced from exc
            raise
        if isinstance(value, JobResult):
            result = value.replace(attempts=ctx.attempt)
        else:
            result = JobResult(id=task_id, status="completed", outcome="completed",
                               attempts=ctx.attempt, value=value)
        return self._finish(result, execution, ctx, ran=True)

    def _finish(self, result: JobResult, execution: Execution, ctx: ExecutionContext,
                *, ran: bool) -> Any:
        rt = runtime.current()
        result = rt.manager.execute_hook(
            "on_result", result, ResultContext(node_id=ctx.node_id, task_id=ctx.task_id,
                                               attempt=ctx.attempt, job=execution.job,
                                               metadata={"ran": ran}))
        if result.status != "completed" and execution.job is not None:
            failure = JobFailed(f"job {result.id} ended {result.status}"
                                f" ({result.outcome or 'no detail'})", result)
            replaced = rt.manager.execute_hook(
                "on_error", failure, ErrorContext(operation="execute", attempt=ctx.attempt,
                                                  job=execution.job, task_id=ctx.task_id))
            if replaced is not failure and isinstance(replaced, BaseException):
                result = result.replace(error=error_info(replaced).model_dump())
        rt.attempts.finish(ctx.task_id)
        if execution.job is not None:
            return result.model_dump(mode="json")
        if result.status != "completed":  # a user task: Celery must record a failure
            error = result.error or ErrorInfo(type="JobFailed", message=result.status)
            raise JobFailed(f"{error.type}: {error.message}", result)
        return result.value
