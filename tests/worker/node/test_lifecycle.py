"""The job lifecycle called directly: a real PluginManager with plugins built here, an
in-memory attempt store, a body that records its calls. No broker, no worker."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from worker import (
    DuplicateDelivery,
    ErrorContext,
    Execution,
    ExecutionContext,
    Job,
    JobDeferred,
    JobFailed,
    JobRejected,
    JobResult,
    Plugin,
    PluginManager,
    ResultContext,
    RetryRequested,
)
from worker.node.lifecycle import (
    Deferred,
    Dropped,
    Finished,
    Outcome,
    RetryLater,
    Stored,
    run_lifecycle,
)
from worker.stores.attempts import Attempt, Attempts

JOB = Job(code="print(1)")
MAX_ATTEMPTS = 3


class Body:
    """A task body that records each call and returns (or raises) what it was given."""

    def __init__(self, returns: Any = None, raises: Exception | None = None) -> None:
        self.returns, self.raises = returns, raises
        self.calls: list[Execution] = []

    def __call__(self, execution: Execution, context: ExecutionContext) -> Any:
        self.calls.append(execution)
        if self.raises is not None:
            raise self.raises
        return self.returns


def completed(job: Job = JOB, **changes: Any) -> JobResult:
    fields: dict[str, Any] = {"status": "completed", "outcome": "completed", "stdout": "1\n"}
    return JobResult(id=job.id, **{**fields, **changes})


class Recorder(Plugin):
    """Records every worker-side hook call as ``(hook, data)``; lowest priority, so it
    sees what the other plugins left."""

    name = "recorder"
    priority = -100

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.log_context: dict[str, Any] = {}

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        self.calls.append(("on_execute", execution))
        self.log_context = structlog.contextvars.get_contextvars()

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        self.calls.append(("on_error", error))

    def on_result(self, result: JobResult, context: ResultContext) -> None:
        self.calls.append(("on_result", result))

    def hooks(self) -> list[str]:
        return [hook for hook, _ in self.calls]

    def data(self, hook: str) -> list[Any]:
        return [data for name, data in self.calls if name == hook]


def raising_on_execute(exc: Exception) -> Plugin:
    class Raiser(Plugin):
        name = "raiser"

        def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
            raise exc

    return Raiser()


class Harness:
    """One delivery's inputs: the manager, the attempt store, the execution."""

    def __init__(self, *plugins: Plugin, job: Job | None = JOB, task: str = "sandrun.run_job",
                 args: list[Any] | None = None) -> None:
        self.recorder = Recorder()
        self.manager = PluginManager()
        self.manager.load_all([*plugins, self.recorder])
        self.store = Attempts(None)
        task_id = job.id if job is not None else "task-1"
        self.execution = Execution(task=task, task_id=task_id, job=job,
                                   task_args=args or [])

    def begin(self, number: int = 1, *, redelivered: bool = False) -> Attempt:
        return self.store.begin(self.execution.task_id, number, redelivered=redelivered)

    def run(self, body: Body, attempt: Attempt | None = None, stored: Any = None) -> Outcome:
        attempt = attempt or self.begin()
        context = ExecutionContext(
            node_id="node-a", pool_id="1", task_id=attempt.task_id, attempt=attempt.number,
            deliveries=attempt.deliveries, queue="sandrun",
            job_id=self.execution.job.id if self.execution.job else None)
        return run_lifecycle(self.manager, attempt, self.execution, context, body,
                             max_attempts=MAX_ATTEMPTS, stored=stored,
                             passthrough=(KeyboardInterrupt, TimeoutError))


def finished(outcome: Outcome) -> JobResult:
    assert isinstance(outcome, Finished), outcome
    return outcome.result


def test_a_completed_job_is_finished_with_its_attempt_number_after_on_result() -> None:
    harness, body = Harness(), Body(completed())
    attempt = harness.begin(2)
    result = finished(harness.run(body, attempt))
    assert body.calls == [harness.execution]
    assert (result.status, result.stdout, result.attempts) == ("completed", "1\n", 2)
    assert harness.recorder.hooks() == ["on_execute", "on_result"]
    assert attempt.finished
    assert harness.recorder.log_context == {"job_id": JOB.id, "task_id": JOB.id, "attempt": 2,
                                            "queue": "sandrun", "node": "node-a"}
    assert structlog.contextvars.get_contextvars() == {}


def test_a_user_tasks_value_becomes_a_completed_result() -> None:
    harness = Harness(job=None, task="tests.add", args=[2, 3])
    result = finished(harness.run(Body(5)))
    assert (result.id, result.status, result.value) == ("task-1", "completed", 5)


def test_veto_rejects_the_job_and_never_runs_it() -> None:
    harness, body = Harness(raising_on_execute(JobRejected("not on my watch"))), Body(completed())
    attempt = harness.begin()
    result = finished(harness.run(body, attempt))
    assert body.calls == []
    assert (result.id, result.status, result.outcome) == (JOB.id, "rejected", "rejected")
    assert result.error is not None and result.error.type == "JobRejected"
    assert result.error.message == "not on my watch"
    assert harness.recorder.hooks() == ["on_result"]  # a veto is not an error to retry
    assert attempt.finished


def test_defer_asks_to_publish_again_after_the_countdown_without_running() -> None:
    harness, body = Harness(raising_on_execute(JobDeferred(42.5, "over the cap"))), Body()
    attempt = harness.begin()
    assert harness.run(body, attempt) == Deferred(42.5)
    assert body.calls == [] and harness.recorder.hooks() == []
    assert attempt.finished


def test_duplicate_delivery_is_dropped_storing_nothing_and_not_run() -> None:
    harness, body = Harness(raising_on_execute(DuplicateDelivery("replayed copy"))), Body()
    attempt = harness.begin()
    assert harness.run(body, attempt) == Dropped("replayed copy")
    assert body.calls == []
    assert harness.recorder.hooks() == []  # no on_result: nothing is stored for the copy
    assert attempt.finished


class AsksForRetry(Plugin):
    name = "asks-for-retry"

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        raise RetryRequested(7.25, f"attempt {context.attempt} failed")


def test_retry_requested_by_on_error_for_a_raising_body_passes_its_countdown() -> None:
    boom = ValueError("boom")
    harness, body = Harness(AsksForRetry()), Body(raises=boom)
    attempt = harness.begin(2)
    assert harness.run(body, attempt) == RetryLater(7.25, boom)
    assert len(body.calls) == 1
    assert "on_result" not in harness.recorder.hooks()
    assert attempt.finished


def test_retry_requested_for_a_failed_job_passes_its_countdown_and_the_failure() -> None:
    failed = JobResult(id=JOB.id, status="failed", outcome="failed", exit_code=3)
    harness = Harness(AsksForRetry())
    attempt = harness.begin()
    outcome = harness.run(Body(failed), attempt)
    assert isinstance(outcome, RetryLater) and outcome.countdown == 7.25
    assert isinstance(outcome.error, JobFailed)
    assert isinstance(outcome.error.result, JobResult) and outcome.error.result.exit_code == 3
    assert harness.recorder.data("on_result") == []
    assert attempt.finished


def test_an_attempt_delivered_beyond_max_attempts_is_worker_lost_and_not_run() -> None:
    harness, body = Harness(), Body(completed())
    for _ in range(MAX_ATTEMPTS):  # the first delivery and its redeliveries
        attempt = harness.begin(redelivered=True)
    assert attempt.deliveries == MAX_ATTEMPTS + 1
    result = finished(harness.run(body, attempt))
    assert body.calls == [] and "on_execute" not in harness.recorder.hooks()
    assert (result.status, result.outcome, result.attempts) == ("failed", "worker_lost", 1)
    assert result.error is not None and result.error.type == "WorkerLost"
    assert f"delivered {MAX_ATTEMPTS} times" in result.error.message
    [error] = harness.recorder.data("on_error")  # the retry plugin buries it from here
    assert isinstance(error, JobFailed) and error.result.outcome == "worker_lost"
    assert attempt.finished
    assert harness.begin(redelivered=True).deliveries == 2  # the count was forgotten


def test_an_attempt_delivered_exactly_max_attempts_times_still_runs() -> None:
    harness, body = Harness(), Body(completed())
    for _ in range(MAX_ATTEMPTS - 1):
        attempt = harness.begin(redelivered=True)
    assert attempt.deliveries == MAX_ATTEMPTS
    assert finished(harness.run(body, attempt)).status == "completed"
    assert len(body.calls) == 1


class Rewriter(Plugin):
    name = "rewriter"

    def on_result(self, result: JobResult, context: ResultContext) -> JobResult:
        return result.replace(stdout=f"rewritten on attempt {context.attempt}")


def test_on_result_replaces_the_result_that_is_stored() -> None:
    harness = Harness(Rewriter())
    result = finished(harness.run(Body(completed()), harness.begin(3)))
    assert result.stdout == "rewritten on attempt 3"
    assert [r.stdout for r in harness.recorder.data("on_result")] == ["rewritten on attempt 3"]


class Replacer(Plugin):
    name = "replacer"

    def on_error(self, error: BaseException, context: ErrorContext) -> BaseException:
        return RuntimeError(f"replaced: {error}")


def test_a_body_exception_is_raised_as_on_errors_replacement() -> None:
    boom = ValueError("boom")
    harness = Harness(Replacer())
    attempt = harness.begin()
    with pytest.raises(RuntimeError, match="replaced: boom") as raised:
        harness.run(Body(raises=boom), attempt)
    assert raised.value.__cause__ is boom
    assert harness.recorder.data("on_error") == [raised.value]
    assert attempt.finished


def test_a_body_exception_nobody_replaces_is_raised_as_it_is() -> None:
    boom = ValueError("boom")
    harness = Harness()
    with pytest.raises(ValueError, match="boom") as raised:
        harness.run(Body(raises=boom))
    assert raised.value is boom and harness.recorder.data("on_error") == [boom]


def test_a_failed_jobs_error_is_replaced_by_on_error_before_it_is_stored() -> None:
    failed = JobResult(id=JOB.id, status="failed", outcome="failed", exit_code=3)
    result = finished(Harness(Replacer()).run(Body(failed)))
    assert result.error is not None and result.error.type == "RuntimeError"
    assert result.error.message.startswith(f"replaced: job {JOB.id} ended failed")


def test_the_adapters_control_flow_passes_through_without_on_error() -> None:
    harness = Harness(Replacer())
    attempt = harness.begin()
    with pytest.raises(TimeoutError):
        harness.run(Body(raises=TimeoutError("soft time limit")), attempt)
    assert harness.recorder.hooks() == ["on_execute"]
    assert not attempt.finished


def test_a_stored_final_result_short_circuits_hooks_and_body() -> None:
    harness, body = Harness(raising_on_execute(JobRejected("would veto"))), Body(completed())
    stored = completed(stdout="from the first run").model_dump(mode="json")
    attempt = harness.begin(redelivered=True)
    assert harness.run(body, attempt, stored=stored) == Stored(stored)
    assert body.calls == [] and harness.recorder.hooks() == []
    assert attempt.finished
