"""The events a delivery's end is logged as: sizes and timings, never the job's output."""

from __future__ import annotations

from celery.exceptions import Retry
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from worker.errors import JobFailed
from worker.models import JobResult
from worker.node import joblog

SECRET = "printed-s3cr3t"
WHERE = {"job_id": "j1", "task_id": "j1", "attempt": 2, "queue": "sandrun", "node": "w1@h"}


def stored() -> dict[str, object]:
    """A job's result as the worker stores it (its JSON form)."""
    return JobResult(
        id="j1", status="failed", outcome="failed", exit_code=1, stdout=SECRET + "\n",
        stderr="é" + SECRET, stderr_truncated=True, execution_time=0.12345678,
        cpu_seconds=0.05, outputs=[{"path": "a.txt", "size": 10, "sha256": "0" * 64},
                                   {"path": "b.bin", "size": 2048, "sha256": "1" * 64}],
        error={"type": "SandboxError", "message": "x" * 500},
        cost={"amount": "0.01", "currency": "USD"}).model_dump(mode="json")


def test_result_fields_are_sizes_and_timings_never_output() -> None:
    fields = joblog.result_fields(stored())
    assert fields == {
        "status": "failed", "outcome": "failed", "exit_code": 1, "signal": None,
        "execution_time": 0.123457, "cpu_seconds": 0.05, "memory_peak_bytes": None,
        "stdout_bytes": len(SECRET) + 1, "stderr_bytes": len(SECRET) + 2,  # é is 2 bytes
        "outputs": 2, "output_bytes": 2058, "truncated": ["stderr"],
        "error_type": "SandboxError", "error": "x" * joblog.ERROR_CHARS + "...",
        "cost": "0.01 USD"}
    assert joblog.result_fields({"not": "a result"}) == {"status": "unknown"}


def test_finished_failed_and_retried_carry_the_delivery_context() -> None:
    with capture_logs(processors=[merge_contextvars]) as events:
        joblog.finished(WHERE, "sandrun.run_job", joblog.result_fields(stored()), 0.5)
        joblog.failed(WHERE, "sandrun.run_job", ValueError("a bug"), 0.25)
        joblog.failed(WHERE, "sandrun.run_job", JobFailed("job j1 ended failed"), None)
        joblog.retried(WHERE, "sandrun.run_job", JobFailed("job j1 ended failed"),
                       Retry(when=3).when)
    assert [(e["event"], e["log_level"]) for e in events] == [
        ("job_finished", "info"), ("job_failed", "error"), ("job_failed", "error"),
        ("job_retried", "info")]
    for event in events:
        assert {k: event[k] for k in WHERE} == WHERE and event["task"] == "sandrun.run_job"
        assert SECRET not in repr(event)
    assert events[0]["wall_seconds"] == 0.5 and events[0]["outputs"] == 2
    # a bug keeps its traceback; Sandrun's own errors say enough in their message
    assert isinstance(events[1]["exc_info"], ValueError) and events[2]["exc_info"] is None
    assert events[3]["retry_in"] == 3.0 and events[3]["error_type"] == "JobFailed"
