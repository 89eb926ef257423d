"""The logging plugin called directly, with structlog's capture helpers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from plugins.logging import LoggingPlugin, logging_plugin
from worker import (
    ErrorContext,
    ExecutionContext,
    Job,
    JobResult,
    PluginManager,
    ResultContext,
    SubmissionContext,
)
from worker.errors import PluginConfigError
from worker.models import Execution


@pytest.fixture(autouse=True)
def _restore_root_logger() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_each_step_is_an_event_with_fields() -> None:
    manager = PluginManager()
    manager.load(logging_plugin(format="json", outputs=["stderr"]))
    job = Job(code="1", payment={"amount": "1", "currency": "USD"})
    with capture_logs() as logs:
        manager.execute_hook("on_submit", job, SubmissionContext(queue="sandrun",
                                                                 correlation_id="req-3"))
        manager.execute_hook("on_execute", Execution(task="sandrun.run_job", task_id=job.id,
                                                     job=job),
                             ExecutionContext(node_id="n", pool_id="7", task_id=job.id))
        manager.execute_hook("on_result", JobResult(id=job.id, status="completed",
                                                    outcome="completed", execution_time=0.5),
                             ResultContext(node_id="n", task_id=job.id))
        manager.execute_hook("on_error", ValueError("bad"), ErrorContext(operation="submit"))
    events = {e["event"]: e for e in logs}
    # job_finished is the worker's own (worker.node.joblog), logged with or without plugin
    assert set(events) == {"job_submitted", "job_started", "operation_failed"}
    assert events["job_submitted"]["job_id"] == job.id
    assert events["job_submitted"]["queue"] == "sandrun"
    assert events["job_submitted"]["correlation_id"] == "req-3"
    assert events["job_submitted"]["payment"] == {"amount": "1", "currency": "USD"}
    assert events["operation_failed"]["error_type"] == "ValueError"
    assert events["operation_failed"]["log_level"] == "error"
    assert all(e["plugin"] == "logging" for e in logs)


def test_json_file_output_carries_bound_context_and_stdlib_records(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    PluginManager().load(logging_plugin(format="json", outputs=[str(out)]))
    structlog.contextvars.bind_contextvars(job_id="j1", task_id="t1", attempt=2)
    try:
        structlog.get_logger("x").info("step_done", rows=3)
        logging.getLogger("celery.worker").info("Task %s received", "t1")
    finally:
        structlog.contextvars.clear_contextvars()
    structlog.get_logger("x").info("after_job")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["step_done", "Task t1 received", "after_job"]
    assert lines[0]["job_id"] == "j1" and lines[0]["rows"] == 3 and lines[0]["level"] == "info"
    assert lines[1]["job_id"] == "j1" and lines[1]["logger"] == "celery.worker"
    assert "job_id" not in lines[2] and "timestamp" in lines[2]


def test_level_filters_and_text_format(tmp_path: Path) -> None:
    out = tmp_path / "log.txt"
    PluginManager().load(logging_plugin(format="text", level="warning", outputs=[str(out)]))
    structlog.get_logger().info("hidden")
    structlog.get_logger().warning("shown", n=1)
    text = out.read_text()
    assert "level=warning event=shown n=1" in text and "hidden" not in text


def test_include_context_off_drops_bound_fields(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    PluginManager().load(logging_plugin(format="json", outputs=[str(out)],
                                        include_context=False))
    structlog.contextvars.bind_contextvars(job_id="j1")
    try:
        structlog.get_logger().info("x")
    finally:
        structlog.contextvars.clear_contextvars()
    assert "job_id" not in json.loads(out.read_text())


def test_loaded_by_name_and_config_validated() -> None:
    manager = PluginManager()
    manager.load("logging", {"format": "json", "level": "WARN"})
    assert isinstance(manager.get("logging"), LoggingPlugin)
    with pytest.raises(PluginConfigError, match="format"):
        PluginManager().load("logging", {"format": "xml"})
