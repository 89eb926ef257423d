"""The task base class of the Sandrun Celery app: the adapter between Celery and the
job lifecycle.

Every task of the app (``sandrun.run_job`` and users' own ``@app.task``
functions) runs through :meth:`SandrunTask.__call__`, in the pool process that
runs the task. It only translates:

1. parse the message into an :class:`~worker.models.Execution` (a
   ``sandrun.run_job`` payload that is not a valid Job is rejected and
   dead-lettered, never run); a delivery the task sends on (:meth:`SandrunTask.sent_on`:
   a GPU job this worker's cards cannot run) ends here, with no attempt used;
2. begin the attempt (Celery's ``retries`` + 1): the cancel records of the task and
   its job are looked up (:mod:`worker.stores.revoked`), a redelivered message counts a
   delivery, a job claims its running lease and, after that, a job or a redelivered
   message looks for a stored final result, all in the same round trip; when Redis
   cannot be reached for it, the message goes back to the queue
   (``Reject(requeue=True)``) and nothing is stored. A job whose lease another
   delivery holds is published again to wait, and not run (:mod:`worker.node.leasing`);
   the lease is released once the outcome is stored (``after_return``) or the delivery
   ended storing nothing;
3. build the :class:`~worker.plugin.context.ExecutionContext` from the request
   (headers, args, eta, redelivered, queue, node, and the job's context: correlation
   id, tenant and baggage from their headers, each dropped and logged when not valid);
4. :func:`~worker.node.lifecycle.run_lifecycle` runs the hooks and the body
   (:meth:`SandrunTask.body`, after storing STARTED; a job past its ``deadline`` ends
   ``expired`` instead, unrun) and says how the delivery ended; a delivery whose task
   or job was cancelled ends ``cancelled`` after step 2 (its count taken back, its
   lease released as any once its result is stored), with no hook and nothing run;
5. that outcome becomes Celery's: a result to store, ``Ignore`` (dropped, or
   deferred after publishing the same message again with a countdown), or
   ``Task.retry(countdown=...)`` so no worker slot sleeps.

Once Celery stored the outcome, Celery's own handlers (``on_success``,
``on_failure``, ``on_retry``) log it as one event of :mod:`worker.node.joblog`
(``job_finished``, ``job_failed``, ``job_retried``), in place of Celery's lines that
carry the whole result (and apply what plugins asked to write with a result that Celery
did not store: :mod:`worker.node.resultwrites`). A job message this class publishes again (deferred,
retried) shows a summary of the job, not the job (:func:`~worker.protocol.job_reprs`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, assert_never

import structlog
from billiard.einfo import ExceptionInfo
from celery import Task, states
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, Terminated
from pydantic import ValidationError

from worker.broker.amqp import redelivery_options, republished_headers
from worker.broker.policies import TRANSIENT_PUBLISH_ERRORS, TRANSIENT_STORAGE_ERRORS
from worker.errors import JobFailed
from worker.models import ErrorInfo, Execution, Job, JobResult
from worker.node import fencing, joblog, leasing, resultwrites, runtime, taskends, taskrequest
from worker.node.lifecycle import (
    Deferred,
    Dropped,
    Finished,
    Outcome,
    RetryLater,
    Stored,
    run_lifecycle,
)
from worker.plugin.context import ExecutionContext
from worker.protocol import (
    LEASE_WAITS_HEADER,
    RUN_JOB,
    job_reprs,
)
from worker.stores.attempts import Attempt
from worker.stores.leases import Claim, token_for

T = TypeVar("T")
#: How long a delivery that could not reach Redis waits before going back to the queue.
REQUEUE_PAUSE_SECONDS = 1.0
log = structlog.get_logger("sandrun.task")
#: Celery's own control flow raised in a body: it reaches Celery untouched.
CELERY_CONTROL = (Ignore, Reject, Retry, SoftTimeLimitExceeded, Terminated)
#: The ends of a delivery after which Celery stores nothing and calls no ``after_return``.
UNSTORED_ENDS = (Ignore, Reject, Retry)


class SandrunTask(Task[Any, Any]):
    """Base class of every task of the app; see the module docstring for the order."""

    #: Celery would store STARTED as soon as a message arrives; :meth:`_run_body` stores it
    #: once every ``on_execute`` hook let the delivery run (``task_track_started``). A copy
    #: a plugin drops as a replay, or defers, must not write over the state of the job it
    #: copies: a FAILURE is overwritten freely, and Celery's guard of a SUCCESS is a read
    #: then a write, which a copy's write can slip between as the original's result lands.
    track_started = False
    #: The main process's request releases the lease of a job whose pool process died.
    Request = "worker.node.leasekeeper:LeasedRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.request.update(sandrun_started=time.monotonic())
        rt = runtime.current()
        travelled = taskrequest.travelled(self.request)
        try:
            execution = self._execution(args, kwargs)
        except (ValidationError, KeyError, IndexError, TypeError) as exc:
            return taskends.invalid(self, exc)
        if execution.job is not None:
            self.request.update(sandrun_job_id=execution.job.id)
        if self.sent_on(rt, execution):
            raise Ignore()
        attempt, stored = self._or_requeue(execution, lambda: self._begin(rt, execution))
        if attempt.revoked:
            self._or_requeue(execution, attempt.uncount)  # its lease goes in after_return
            return taskends.cancelled(self.request, execution)
        if stored is None and not attempt.claim.ours:
            self._or_requeue(execution, attempt.uncount)
            self._wait_for_lease(rt, execution, attempt.claim)
        try:
            outcome = run_lifecycle(rt.manager, attempt, execution,
                                    taskrequest.delivery_context(self, rt, execution,
                                                                 attempt, travelled),
                                    self._run_body,
                                    max_attempts=rt.settings.max_attempts, stored=stored,
                                    passthrough=CELERY_CONTROL,
                                    writes_with_result=resultwrites.wanted(self, rt.redis))
            return self._to_celery(outcome, execution)
        except UNSTORED_ENDS:
            resultwrites.store_left(self)  # what was to ride with a result never stored
            self._release_lease(rt)
            raise

    def sent_on(self, rt: runtime.Runtime, execution: Execution) -> bool:
        """Whether this delivery was published on to another worker before its attempt
        began, so this one ends here (``sandrun.run_job`` does it for a GPU job this
        worker's cards cannot run, unless it was cancelled: :mod:`worker.node.gpuroute`)."""
        return False

    def cancel_ids(self, execution: Execution) -> tuple[str, str | None]:
        """The ids whose cancel records stop this delivery: the task's, and the job's in
        its body (a consensus replica's job is the job cancelled)."""
        return str(self.request.id), execution.job.id if execution.job is not None else None

    def body(self, execution: Execution, context: ExecutionContext) -> Any:
        """The task's own work, which the lifecycle runs between ``on_execute`` and
        ``on_result``: here the decorated function with the message's arguments
        (``sandrun.run_job`` overrides it to take the parsed Job)."""
        return self.run(*execution.task_args, **execution.task_kwargs)

    def _run_body(self, execution: Execution, context: ExecutionContext) -> Any:
        """What the lifecycle runs once the hooks let this delivery run: STARTED is
        stored (as Celery's ``task_track_started`` would; our result store sends it and
        reads the reply once the body ended, so its round trip overlaps the body's start),
        then :meth:`body`; a job past its deadline gets an ``expired`` result instead, and
        never starts."""
        if execution.job is not None and execution.job.expired():
            return taskends.expired(execution.job)
        request = self.request
        if not (self.app.conf.task_track_started and not request.is_eager
                and not self.ignore_result):
            return self.body(execution, context)
        where = {"pid": os.getpid(), "hostname": request.hostname}
        send = getattr(self.backend, "send_state", None)  # ours: its reply read after
        if send is None:
            self.backend.store_result(str(request.id), where, states.STARTED, request=request)
            return self.body(execution, context)
        stored = send(str(request.id), where, states.STARTED, request=request)
        try:
            return self.body(execution, context)
        finally:
            stored()  # before anything else is stored for it

    def _execution(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Execution:
        """The message as the lifecycle sees it; a job's payload is parsed here, once."""
        if self.name != RUN_JOB:
            return Execution(task=self.name, task_id=self.request.id, task_args=list(args),
                             task_kwargs=dict(kwargs))
        job = Job.model_validate(args[0] if args else kwargs["job"])
        return Execution(task=self.name, task_id=self.request.id, job=job)

    def _or_requeue(self, execution: Execution, step: Callable[[], T]) -> T:
        """``step`` (a Redis read or write as a delivery starts: the cancel record, the
        delivery count, a stored result), or, when Redis cannot be reached for it, the
        message back to the broker (``Reject(requeue=True)``, with late acks) so that
        another delivery starts it: a transient broker fault must never become a job's
        final result (Celery would store the error as its FAILURE).

        redis-py has already retried the call by then; the pause keeps a worker whose
        result store is down (and broker up) from spinning on the same message."""
        try:
            return step()
        except TRANSIENT_STORAGE_ERRORS as exc:
            self._requeue(execution, exc)

    def _requeue(self, execution: Execution, exc: Exception) -> NoReturn:
        """Back to the broker after a pause (see :meth:`_or_requeue`), storing nothing."""
        log.warning("delivery_requeued", task_id=str(self.request.id),
                    job_id=execution.job.id if execution.job else None,
                    reason=f"{type(exc).__name__}: {exc}", pause=REQUEUE_PAUSE_SECONDS)
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(exc, requeue=True) from exc

    def _begin(self, rt: runtime.Runtime, execution: Execution) -> tuple[Attempt, Any]:
        """This delivery's attempt (whether it was cancelled, its count, its lease), and a
        stored final result if there is one, in one round trip on Redis.

        Only a job (a result may exist under its id) or a redelivered message (a
        possible crash loop, or a result stored before the ack was lost) looks for a
        result; a cancelled one's is not read (it ends ``cancelled`` all the same)."""
        task_id = str(self.request.id)
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        look = execution.job is not None or redelivered
        key_for = getattr(self.backend, "get_key_for_task", None)
        key = key_for(task_id).decode() if look and rt.redis is not None and key_for else None
        token = None
        if execution.job is not None and rt.leases.client is not None:
            token = token_for(str(self.request.hostname or rt.node_id), os.getpid())
        attempt = rt.attempts.begin(task_id, int(self.request.retries or 0) + 1,
                                    redelivered=redelivered, result_key=key,
                                    leases=rt.leases, token=token,
                                    revocations=rt.revocations,
                                    cancel_ids=self.cancel_ids(execution))
        if token is not None and attempt.claim.ours:
            self.request.update(sandrun_lease=token)
            fencing.arm(fencing.fences_dir(rt.settings.state_dir), task_id)  # fenced: it only
        if not look or attempt.revoked:
            return attempt, None
        if key is None:
            meta = self.backend.get_task_meta(task_id)
        else:
            meta = self.backend.decode_result(attempt.stored) if attempt.stored else {}
        return attempt, meta.get("result") if meta.get("status") == "SUCCESS" else None

    def _wait_for_lease(self, rt: runtime.Runtime, execution: Execution, claim: Claim
                        ) -> NoReturn:
        """Another delivery runs this job (it holds the job's lease): publish this message
        again to look after a countdown, and end this delivery (acknowledged), unrun and
        not counted as a delivery of its attempt (it started nothing). A broker that
        cannot take the publish sends this delivery back to the queue instead."""
        headers = republished_headers(self.request.headers)
        waited = leasing.waits(headers)
        visibility = (self.app.conf.broker_transport_options or {}).get("visibility_timeout")
        wait = leasing.countdown(claim, waited, rt.leases.ttl, visibility)
        headers[LEASE_WAITS_HEADER] = waited + 1
        log.info("delivery_waits_for_lease", task_id=str(self.request.id),
                 job_id=execution.job.id if execution.job else None, holder=claim.held_by,
                 countdown=wait, waits=waited + 1)
        try:
            self.signature_from_request(headers=headers, **self._again(wait),
                                        **self._reprs()).apply_async()
        except TRANSIENT_PUBLISH_ERRORS as exc:
            self._requeue(execution, exc)
        raise Ignore()

    def _release_lease(self, rt: runtime.Runtime) -> None:
        """Release this delivery's running lease, if it holds one (once); a fence for its
        job is too late from here on."""
        token = self.request.get("sandrun_lease")
        if token:
            fencing.disarm()
            self.request.update(sandrun_lease=None)
            leasing.release(rt.leases, str(self.request.id), token)

    def _to_celery(self, outcome: Outcome, execution: Execution) -> Any:
        """Tell Celery how this delivery ended, with its own mechanisms."""
        match outcome:
            case Finished(result, writes):
                resultwrites.hand_over(self, writes)
                return self._returned(result, execution)
            case Stored(value):
                self.request.update(sandrun_already_finished=True)
                return value
            case Deferred(countdown):
                self.signature_from_request(**self._again(countdown),
                                            **self._reprs()).apply_async()
                raise Ignore()
            case Dropped():
                raise Ignore()
            case RetryLater(countdown, error):
                # The retry plugin decided; Celery's own limit must not (max_retries=None
                # would mean "the task's default", 3, and cap every policy at 4 attempts).
                raise self.retry(exc=JobFailed(str(error)), **self._again(countdown),
                                 max_retries=int(self.request.retries or 0) + 1,
                                 **self._reprs()) from error
        assert_never(outcome)

    def _again(self, countdown: float) -> dict[str, Any]:
        """Publish options for this delivery's message ``countdown`` s from now."""
        return redelivery_options(self.app.conf, self.request.delivery_info, countdown)

    def _reprs(self) -> dict[str, Any]:
        """What a job message published again shows of its job: a summary (Celery would
        put the whole job, code and env values, in it)."""
        if self.name != RUN_JOB:
            return {}
        return job_reprs(self.request.args or (), self.request.kwargs or {})

    def _returned(self, result: JobResult, execution: Execution) -> Any:
        """What the task returns for Celery to store: a job's JobResult (its JSON form),
        or a user task's value; a user task that did not complete must raise, so that
        Celery records a failure."""
        if execution.job is not None:
            # an empty provenance is left out, so clients of earlier releases (whose
            # JobResult forbids unknown fields) still read what this worker stores
            return result.model_dump(mode="json",
                                     exclude=None if result.provenance else {"provenance"})
        if result.status != "completed":
            error = result.error or ErrorInfo(type="JobFailed", message=result.status)
            raise JobFailed(f"{error.type}: {error.message}")
        return result.value

    # -- Celery's handlers, called once the outcome is stored: one event each ------------
    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> None:
        """``job_finished``: a job's result in sizes and timings, a user task's status."""
        resultwrites.store_left(self)
        fields: dict[str, Any] = (joblog.result_fields(retval) if self.name == RUN_JOB
                                  else {"status": "completed", "outcome": "completed"})
        if self.request.get("sandrun_already_finished"):
            fields["already_finished"] = True
        request = self.request
        joblog.finished(taskrequest.where(request), self.name, fields, taskrequest.wall(request))

    def after_return(self, *args: Any, **kwargs: Any) -> None:
        """Once Celery stored the outcome (a success or a failure): release the job's
        running lease, so that a copy that comes to look finds the result first."""
        rt = runtime.active()
        if rt is not None:
            self._release_lease(rt)

    def on_failure(self, exc: Exception, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: ExceptionInfo) -> None:
        """``job_failed``: the exception Celery stored, without the task's arguments."""
        resultwrites.store_left(self)
        request = self.request
        joblog.failed(taskrequest.where(request), self.name, exc, taskrequest.wall(request))

    def on_retry(self, exc: Exception, task_id: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], einfo: ExceptionInfo) -> None:
        """``job_retried``: why, and when the next attempt runs."""
        reason: Any = einfo.exception
        if not isinstance(reason, Retry):  # billiard wraps it with its traceback
            reason = getattr(reason, "exc", None)
        joblog.retried(taskrequest.where(self.request), self.name, exc,
                       reason.when if isinstance(reason, Retry) else None)
