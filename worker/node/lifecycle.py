"""The life of one delivery on a worker: attempts, hooks and body, as a plain function.

:func:`run_lifecycle` is everything a worker decides between receiving a task and
storing its result, with no Celery in it, so it is tested by calling it. The Celery
task base class (:mod:`worker.node.taskbase`) parses the message, makes the attempt
handle and the :class:`~worker.plugin.context.ExecutionContext`, calls it, and maps
what it returns to Celery's own mechanisms:

=========================  ======================================  ==========================
outcome                    when                                    the Celery adapter
=========================  ======================================  ==========================
``Finished(result)``       the attempt ended: ran, vetoed, or its  stores the result (a job)
                           worker was lost too often               or returns/raises (a task)
``Stored(value)``          a final result is already stored        returns it as it is
``Deferred(countdown)``    ``on_execute`` raised JobDeferred       publishes the same message
                                                                   again after ``countdown``
``Dropped(reason)``        ``on_execute`` raised DuplicateDelivery ends it, storing nothing
``RetryLater(countdown,    ``on_error`` raised RetryRequested      ``Task.retry(countdown)``
error)``
=========================  ======================================  ==========================

A body exception that is not retried is raised (replaced if ``on_error`` returned
another); exceptions in ``passthrough`` (the adapter's own control flow, such as
Celery's soft time limit) go through untouched, without ``on_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from worker.errors import DuplicateDelivery, JobDeferred, JobFailed, JobRejected, RetryRequested
from worker.models import ErrorInfo, Execution, JobContext, JobResult
from worker.models.context import job_context_bound
from worker.plugin.context import ErrorContext, ExecutionContext, ResultContext
from worker.plugin.manager import PluginManager
from worker.stores.attempts import Attempt
from worker.stores.ops import Set
from worker.stores.storage import PluginStorage

#: The task's own work: gets the parsed execution and its context, returns a JobResult
#: (a job) or any value (a user task).
Body = Callable[[Execution, ExecutionContext], Any]

log = structlog.get_logger("sandrun.task")


@dataclass(frozen=True, slots=True)
class Finished:
    """The attempt ended with ``result`` (after ``on_result``): store it, and with it the
    ``writes`` plugins asked to land with it (``ResultContext.store_with_result``; only
    when :func:`run_lifecycle` was given ``writes_with_result``)."""

    result: JobResult
    writes: tuple[tuple[PluginStorage, Set], ...] = ()


@dataclass(frozen=True, slots=True)
class Stored:
    """A final result of this task was already stored (``value``, as stored): the task
    is not run again."""

    value: Any


@dataclass(frozen=True, slots=True)
class Deferred:
    """Publish this same message again ``countdown`` seconds from now (same attempt);
    this delivery ends without running."""

    countdown: float


@dataclass(frozen=True, slots=True)
class Dropped:
    """End this delivery storing nothing: it copies one already accepted."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Publish the next attempt ``countdown`` seconds from now; ``error`` is why this
    one failed."""

    countdown: float
    error: BaseException


Outcome = Finished | Stored | Deferred | Dropped | RetryLater


def error_info(exc: BaseException) -> ErrorInfo:
    """The stored form of an exception."""
    return ErrorInfo(type=type(exc).__name__, message=str(exc))


def run_lifecycle(manager: PluginManager, attempt: Attempt, execution: Execution,
                  context: ExecutionContext, body: Body, *, max_attempts: int,
                  stored: Any = None, passthrough: tuple[type[BaseException], ...] = (),
                  writes_with_result: bool = False) -> Outcome:
    """Run one delivery of ``execution`` through its hooks and ``body``; called by the
    task adapter once per delivery, with the attempt it began and a stored final result
    if it found one (see the module docstring for what each outcome asks of it).

    1. a stored final result ends it: a finished job is not run again;
    2. the log context gets job_id, task_id, attempt, queue and node, and the job's
       correlation id, tenant and baggage (also :func:`~worker.models.current_job_context`,
       which dead letters read, and the result's ``context``);
    3. an attempt delivered more than ``max_attempts`` times killed its worker each
       time: it is failed (``worker_lost``), not run;
    4. ``on_execute`` may veto (rejected, never run), defer or drop it;
    5. the body; an exception goes through ``on_error`` (retry, or raise);
    6. a result other than completed, rejected or expired goes through ``on_error`` as
       :class:`~worker.errors.JobFailed`; ``on_result`` then decides what is stored.

    The attempt is finished whenever the delivery ends on its own terms. With
    ``writes_with_result`` (the caller stores the result where plugin storage lives) the
    writes ``on_result`` hooks hand to ``store_with_result`` come back in ``Finished``
    for the caller to store with the result; without, they are applied at once.
    """
    if stored is not None:
        attempt.finish()
        return Stored(stored)
    travelled = JobContext.model_construct(  # validated from its headers by the adapter
        correlation_id=context.correlation_id, tenant=context.tenant,
        baggage=dict(context.baggage))
    delivery = _Delivery(manager, attempt, execution, context, travelled,
                         writes=writes_with_result)
    with bound_contextvars(job_id=context.job_id or context.task_id, task_id=context.task_id,
                           attempt=attempt.number, queue=context.queue, node=context.node_id,
                           **travelled.log_fields()), job_context_bound(travelled):
        if attempt.deliveries > max_attempts:
            return delivery.conclude(delivery.worker_lost())
        stopped = delivery.execute_hooks()
        if stopped is not None:
            return stopped
        try:
            value = body(execution, context)
        except passthrough:
            raise
        except Exception as exc:
            return delivery.body_failed(exc)
        return delivery.conclude(delivery.result_of(value))


class _Delivery:
    """The steps of :func:`run_lifecycle`, over the inputs they share."""

    __slots__ = ("attempt", "context", "execution", "manager", "travelled", "writes")

    def __init__(self, manager: PluginManager, attempt: Attempt, execution: Execution,
                 context: ExecutionContext, travelled: JobContext, *, writes: bool) -> None:
        self.manager, self.attempt = manager, attempt
        self.execution, self.context, self.travelled = execution, context, travelled
        self.writes = writes

    @property
    def result_id(self) -> str:
        """The id a result is stored under: the job's, else the task's."""
        job = self.execution.job
        return job.id if job is not None else self.context.task_id

    def worker_lost(self) -> JobResult:
        """The result of an attempt whose every delivery killed its worker process."""
        n = self.attempt.number
        return JobResult(
            id=self.result_id, status="failed", outcome="worker_lost", attempts=n,
            error=ErrorInfo(type="WorkerLost", message=(
                f"attempt {n} was delivered {self.attempt.deliveries - 1} times and its "
                "worker process died each time; not running it again")))

    def execute_hooks(self) -> Outcome | None:
        """``on_execute``: None to go on, or how a plugin stopped this delivery."""
        try:
            self.manager.on_execute(self.execution, self.context)
        except JobRejected as exc:
            return self.conclude(JobResult(id=self.result_id, status="rejected",
                                           outcome="rejected", attempts=self.attempt.number,
                                           error=error_info(exc)))
        except JobDeferred as exc:
            self.attempt.finish()
            log.info("job_deferred", countdown=exc.countdown, reason=str(exc))
            return Deferred(exc.countdown)
        except DuplicateDelivery as exc:
            self.attempt.finish()
            log.warning("delivery_dropped", reason=str(exc))
            return Dropped(str(exc))
        return None

    def result_of(self, value: Any) -> JobResult:
        """What the body returned, as a JobResult of this attempt."""
        if isinstance(value, JobResult):
            return value.replace(attempts=self.attempt.number)
        return JobResult(id=self.context.task_id, status="completed", outcome="completed",
                         attempts=self.attempt.number, value=value)

    def on_error(self, error: BaseException) -> BaseException | RetryLater:
        """``on_error``: the error to report, or a retry a plugin asked for."""
        try:
            return self.manager.on_error(error, ErrorContext(
                operation="execute", attempt=self.attempt.number, job=self.execution.job,
                task_id=self.context.task_id, execution=self.execution))
        except RetryRequested as retry:
            self.attempt.finish()
            return RetryLater(retry.countdown, error)

    def body_failed(self, exc: Exception) -> RetryLater:
        """The body raised: a retry, else raise it (replaced if ``on_error`` said so).
        Called while ``exc`` is being handled, so a replacement chains to it."""
        reported = self.on_error(exc)
        if isinstance(reported, RetryLater):
            return reported
        self.attempt.finish()
        if reported is not exc:
            raise reported from exc
        raise exc

    def conclude(self, result: JobResult) -> Outcome:
        """End the attempt with ``result``: ``on_error`` for a job that did not complete
        (which may retry it or replace its error), then ``on_result``."""
        if result.status not in {"completed", "rejected", "expired"}:
            failure = JobFailed(f"job {result.id} ended {result.status}"
                                f" ({result.outcome or 'no detail'})", result)
            reported = self.on_error(failure)
            if isinstance(reported, RetryLater):
                return reported
            if reported is not failure:
                result = result.replace(error=error_info(reported).model_dump())
        if result.context is None and self.travelled.log_fields():
            result = result.model_copy(update={"context": self.travelled})
        context = ResultContext(node_id=self.context.node_id, task_id=self.context.task_id,
                                attempt=self.attempt.number, job=self.execution.job,
                                provenance=list(self.context.provenance),
                                result_writes=[] if self.writes else None)
        result = self.manager.on_result(result, context)
        if context.provenance:  # which plugins changed the job and its result, in order
            result = result.replace(provenance=context.provenance)
        self.attempt.finish()
        return Finished(result, tuple(context.result_writes or ()))
