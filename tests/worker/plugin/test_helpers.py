"""BasePlugin and the with_metrics / with_logging decorators, sync and async."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from worker import (
    BasePlugin,
    InMemoryMetrics,
    Job,
    PluginManager,
    SubmissionContext,
    hook,
    with_logging,
    with_metrics,
)
from worker.plugin.helpers import metric_name


class Scheduler(BasePlugin):
    name = "my-scheduler"

    @with_logging("job_scheduling")
    @with_metrics("scheduled")
    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        if job.labels.get("fail"):
            raise RuntimeError("cannot schedule")
        return job.replace(priority=9)

    @with_metrics("processed")
    async def process_queue(self, n: int) -> int:
        await asyncio.sleep(0)
        return n * 2


def test_base_plugin_keeps_context_tools() -> None:
    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics)
    plugin = manager.load(Scheduler)
    assert isinstance(plugin, Scheduler)
    assert plugin.metrics is not None and plugin.storage is not None and plugin.config is None
    counter = plugin.metric("ticks")
    assert counter is not None
    counter.inc()
    assert metrics.value("sandrun_my_scheduler_ticks") == 1


def test_logger_is_bound_with_plugin_name_even_before_init() -> None:
    plugin = Scheduler()
    with structlog.testing.capture_logs() as logs:
        plugin.log("info", "queue_checked", depth=3)
    assert logs == [{"event": "queue_checked", "depth": 3, "plugin": "my-scheduler",
                     "log_level": "info"}]


def test_with_metrics_and_with_logging_on_a_hook() -> None:
    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics)
    manager.load(Scheduler)
    with structlog.testing.capture_logs() as logs:
        out = manager.execute_hook("on_submit", Job(code="1"), SubmissionContext())
        manager.execute_hook("on_submit", Job(code="1", labels={"fail": "1"}),
                             SubmissionContext())
    assert out.priority == 9
    assert metrics.value("sandrun_my_scheduler_scheduled_total", status="success") == 1
    assert metrics.value("sandrun_my_scheduler_scheduled_total", status="error") == 1
    assert len(metrics.observations("sandrun_my_scheduler_scheduled_duration_seconds")) == 2
    events = [e["event"] for e in logs]
    assert events.count("job_scheduling") == 2 and "hook_failed" in events


def test_with_metrics_on_async_method_stays_async() -> None:
    metrics = InMemoryMetrics()
    plugin = PluginManager(metrics=metrics).load(Scheduler)
    assert isinstance(plugin, Scheduler)
    assert asyncio.iscoroutinefunction(plugin.process_queue)
    assert asyncio.run(plugin.process_queue(21)) == 42
    assert metrics.value("sandrun_my_scheduler_processed_total", status="success") == 1


def test_decorators_keep_hook_options() -> None:
    class P(BasePlugin):
        name = "p"

        @with_metrics("x")
        @hook(priority=42, once=True)
        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            return None

    manager = PluginManager()
    manager.load(P)
    (entry,) = manager.hook_plan()["on_submit"]
    assert (entry.priority, entry.once) == (42, True)


def test_with_metrics_before_init_is_harmless() -> None:
    assert Scheduler().on_submit(Job(code="1"), SubmissionContext()).priority == 9


@pytest.mark.parametrize(("plugin", "name", "expected"), [
    ("retry", "attempts_total", "sandrun_retry_attempts_total"),
    ("my-plugin.v2", "x", "sandrun_my_plugin_v2_x"),
])
def test_metric_names_are_prometheus_safe(plugin: str, name: str, expected: str) -> None:
    assert metric_name(plugin, name) == expected
