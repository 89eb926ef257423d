"""Logging set-up of worker/logs.py that the logging plugin's tests do not cover: structlog
through Celery's stdlib logging, and Celery's end-of-task lines dropped."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from celery.app import trace

from worker import logs

SECRET = "local-s3cr3t"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records]


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Records]:
    """The root logger as Celery leaves it at ``-l info`` (no logging plugin loaded in this
    process, which earlier tests may have done), with a handler to read."""
    monkeypatch.setattr(logs._State, "plugin_configured", False)
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    handler = Records()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logs.route_to_stdlib()
    yield handler
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_events_become_one_line_records_with_the_bound_context_first(root: Records) -> None:
    with structlog.contextvars.bound_contextvars(job_id="j1"):
        structlog.get_logger("sandrun.task").info("job_finished", status="completed",
                                                  exit_code=0, error=None)
    structlog.get_logger("sandrun.task").debug("below_the_level")
    assert root.lines() == ["INFO sandrun.task job_finished job_id=j1 status=completed "
                            "exit_code=0 error=None"]


def failing_with_a_secret_local() -> None:
    token = SECRET
    raise ValueError(f"boom ({len(token)} chars)")


def test_an_exception_is_a_plain_traceback_without_local_variables(root: Records) -> None:
    try:
        failing_with_a_secret_local()
    except ValueError as exc:
        structlog.get_logger("sandrun.plugins").error("hook_failed", exc_info=exc)
    [line] = root.lines()
    assert line.startswith("ERROR sandrun.plugins hook_failed\nTraceback")
    assert "ValueError: boom (12 chars)" in line and SECRET not in line


@pytest.fixture
def tracer() -> Iterator[Records]:
    """Celery's task tracer logger, read directly, with only the filter under test."""
    logger = logging.getLogger("celery.app.trace")
    filters, level = list(logger.filters), logger.level
    handler = Records()
    logger.filters[:] = []
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logs.quiet_celery_task_lines(lambda name: name.startswith("sandrun."))
    yield handler
    logger.removeHandler(handler)
    logger.filters[:] = filters
    logger.setLevel(level)


def end_records(name: str) -> None:
    """What Celery's tracer logs when task ``name`` succeeds, fails or is retried."""
    context = {"id": "t1", "name": name, "return_value": f"{{'stdout': '{SECRET}'}}",
               "runtime": 0.1, "exc": f"ValueError('{SECRET}')", "description": "raised"}
    trace.info(trace.LOG_SUCCESS, context)
    trace.logger.error(trace.LOG_FAILURE.strip(), context, extra={"data": context})
    trace.info(trace.LOG_RETRY, context)


def test_celerys_end_of_task_lines_are_dropped_for_owned_tasks_only(tracer: Records) -> None:
    end_records("sandrun.run_job")
    trace.info(trace.LOG_IGNORED, {"id": "t1", "name": "sandrun.run_job",
                                   "description": "ignored"})
    assert tracer.lines() == ["INFO celery.app.trace Task sandrun.run_job[t1] ignored"]
    end_records("theirs.task")
    assert len(tracer.records) == 4  # a task that does not log its own end keeps Celery's


def test_installing_the_filter_again_replaces_it(tracer: Records) -> None:
    logs.quiet_celery_task_lines(lambda name: False)
    assert len(logging.getLogger("celery.app.trace").filters) == 1
    end_records("sandrun.run_job")
    assert len(tracer.records) == 3
