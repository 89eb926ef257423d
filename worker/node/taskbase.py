"""The task base class of the Sandrun Celery app: where worker-side hooks run.

Every task of the app (``sandrun.run_job`` and users' own ``@app.task``
functions) runs through :meth:`SandrunTask.__call__`, which, in the pool process
that runs the task:

1. for a redelivered message, counts this delivery of this attempt (a task
   that killed its worker process ``SANDRUN_MAX_ATTEMPTS`` times is failed, not
   run again); for a job or a redelivered message, looks for a stored final
   result in the same round trip (a finished job is not run again);
2. binds job_id, task_id, attempt, queue and node to the log context;
3. ``on_execute`` (``JobRejected`` stops the task: status rejected, never run;
   ``JobDeferred`` publishes the same message again after a countdown, same
   attempt, and ends this delivery; ``DuplicateDelivery`` drops a replayed copy
   without storing anything, so the original's result stands);
4. the task body; an exception goes through ``on_error``;
5. a job that did not complete goes through ``on_error`` as
   :class:`~worker.errors.JobFailed`; ``on_result`` then decides what is stored.

``on_error`` may raise :class:`~worker.errors.RetryRequested`: the task is
re-published with ``Task.retry(countdown=...)``, so no worker slot sleeps; the
attempt number travels with the message (Celery's ``retries``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any, NoReturn

import structlog
from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, Terminated
from pydantic import ValidationError

from worker.errors import (
    DuplicateDelivery,
    InvalidJob,
    JobDeferred,
    JobFailed,
    JobRejected,
    RetryRequested,
)
from worker.models import ErrorInfo, Execution, Job, JobResult
from worker.node import runtime
from worker.plugin.context import ErrorContext, ExecutionContext, ResultContext
from worker.protocol import RUN_JOB, SUBMITTED_HEADER
from worker.stores.deadletter import DeadLetter

EXECUTION_ATTR = "sandrun_execution"
RAW_LIMIT = 64 * 1024
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

    def _context(self, rt: runtime.Runtime, execution: Execution) -> tuple[ExecutionContext, Any]:
        """The execution context, and a stored final result if there is one."""
        task_id = str(self.request.id)
        attempt = int(self.request.retries or 0) + 1
        delivery = self.request.delivery_info or {}
        redelivered = bool(delivery.get("redelivered"))
        meta: dict[str, Any] = {}
        if execution.job is not None or redelivered:  # a job id, or a possible crash loop
            key_for = getattr(self.backend, "get_key_for_task", None)
            key = key_for(task_id).decode() if rt.redis is not None and key_for else None
            deliveries, raw = rt.attempts.begin(f"{task_id}:{attempt}", key,
                                                redelivered=redelivered)
            meta = self.backend.get_task_meta(task_id) if key is None else (
                self.backend.decode_result(raw) if raw else {})
        else:
            deliveries = 1
        submitted = getattr(self.request, SUBMITTED_HEADER, None)
        ctx = ExecutionContext(
            node_id=str(self.request.hostname or rt.node_id), pool_id=str(os.getpid()),
            task_id=task_id, attempt=attempt, deliveries=deliveries,
            queue=delivery.get("routing_key"),
            submitted_at=datetime.fromtimestamp(float(submitted), UTC) if submitted else None,
            job_id=execution.job.id if execution.job else None,
            headers=dict(self.request.headers or {}), args=list(self.request.args or ()),
            kwargs=dict(self.request.kwargs or {}),
            eta=str(self.request.eta) if self.request.eta else None,
            redelivered=redelivered)
        return ctx, meta.get("result") if meta.get("status") == "SUCCESS" else None

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
        rt.manager.on_error(error, ErrorContext(operation="parse", task_id=task_id))
        if rt.manager.dead_letters is not None:
            rt.manager.dead_letters.add(DeadLetter(
                id=task_id, task=self.name, reason=str(error), source="broker",
                raw=json.dumps(self.request.args, default=str)[:RAW_LIMIT]))
        return JobResult(id=task_id, status="rejected", outcome="rejected",
                         error=error_info(error)).model_dump(mode="json")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = runtime.current()
        try:
            execution = self._execution(args, kwargs)
        except (ValidationError, KeyError, IndexError, TypeError) as exc:
            return self._invalid(exc)
        ctx, stored = self._context(rt, execution)
        if stored is not None:
            return stored
        structlog.contextvars.bind_contextvars(
            job_id=ctx.job_id or ctx.task_id, task_id=ctx.task_id, attempt=ctx.attempt,
            queue=ctx.queue, node=ctx.node_id)
        try:
            return self._run(rt, execution, ctx, args, kwargs)
        finally:
            structlog.contextvars.unbind_contextvars("job_id", "task_id", "attempt", "queue",
                                                     "node")

    def _run(self, rt: runtime.Runtime, execution: Execution, ctx: ExecutionContext,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result_id = execution.job.id if execution.job else ctx.task_id
        if ctx.deliveries > rt.settings.max_attempts:
            result = JobResult(id=result_id, status="failed", outcome="worker_lost",
                               attempts=ctx.attempt, error=ErrorInfo(type="WorkerLost", message=(
                                   f"attempt {ctx.attempt} was delivered "
                                   f"{ctx.deliveries - 1} times and its worker process died "
                                   "each time; not running it again")))
            return self._finish(result, execution, ctx)
        try:
            rt.manager.on_execute(execution, ctx)
        except JobRejected as exc:
            result = JobResult(id=result_id, status="rejected", outcome="rejected",
                               attempts=ctx.attempt, error=error_info(exc))
            return self._finish(result, execution, ctx)
        except JobDeferred as exc:
            self._defer(exc, ctx)
        except DuplicateDelivery as exc:
            rt.attempts.finish(f"{ctx.task_id}:{ctx.attempt}", ctx.deliveries)
            log.warning("delivery_dropped", reason=str(exc))
            raise Ignore() from None
        setattr(self.request, EXECUTION_ATTR, execution)  # the body reuses the parsed Job
        try:
            value = self.run(*args, **kwargs)
        except CELERY_CONTROL:
            raise
        except Exception as exc:
            self._failed(exc, execution, ctx)
        if isinstance(value, JobResult):
            result = value.replace(attempts=ctx.attempt)
        else:
            result = JobResult(id=ctx.task_id, status="completed", outcome="completed",
                               attempts=ctx.attempt, value=value)
        return self._finish(result, execution, ctx)

    def _defer(self, deferred: JobDeferred, ctx: ExecutionContext) -> NoReturn:
        """Publish this same message again later and end this delivery without running."""
        runtime.current().attempts.finish(f"{ctx.task_id}:{ctx.attempt}", ctx.deliveries)
        log.info("job_deferred", countdown=deferred.countdown, reason=str(deferred))
        self.signature_from_request(countdown=deferred.countdown).apply_async()
        raise Ignore()

    def _on_error(self, error: BaseException, execution: Execution,
                  ctx: ExecutionContext) -> BaseException:
        """Dispatch ``on_error``; a RetryRequested re-publishes the task (never returns)."""
        rt = runtime.current()
        err_ctx = ErrorContext(operation="execute", attempt=ctx.attempt, job=execution.job,
                               task_id=ctx.task_id, execution=execution)
        try:
            replaced = rt.manager.on_error(error, err_ctx)
        except RetryRequested as retry:
            rt.attempts.finish(f"{ctx.task_id}:{ctx.attempt}", ctx.deliveries)
            raise self.retry(exc=JobFailed(str(error)), countdown=retry.countdown,
                             max_retries=None) from error
        return replaced

    def _failed(self, exc: Exception, execution: Execution, ctx: ExecutionContext) -> NoReturn:
        """The task body raised: on_error, then re-raise (replaced if a hook said so)."""
        replaced = self._on_error(exc, execution, ctx)
        runtime.current().attempts.finish(f"{ctx.task_id}:{ctx.attempt}", ctx.deliveries)
        if replaced is not exc:
            raise replaced from exc
        raise exc

    def _finish(self, result: JobResult, execution: Execution, ctx: ExecutionContext) -> Any:
        rt = runtime.current()
        if result.status not in {"completed", "rejected"}:
            failure = JobFailed(f"job {result.id} ended {result.status}"
                                f" ({result.outcome or 'no detail'})", result)
            replaced = self._on_error(failure, execution, ctx)
            if replaced is not failure:
                result = result.replace(error=error_info(replaced).model_dump())
        result = rt.manager.on_result(result, ResultContext(
            node_id=ctx.node_id, task_id=ctx.task_id, attempt=ctx.attempt, job=execution.job))
        rt.attempts.finish(f"{ctx.task_id}:{ctx.attempt}", ctx.deliveries)
        if execution.job is not None:
            return result.model_dump(mode="json")
        if result.status != "completed":  # a user task: Celery must record a failure
            error = result.error or ErrorInfo(type="JobFailed", message=result.status)
            raise JobFailed(f"{error.type}: {error.message}")
        return result.value
