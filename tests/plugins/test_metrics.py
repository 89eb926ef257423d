"""The metrics plugin called directly: names, labels, patterns, hook timing, ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from prometheus_client import values

from plugins.metrics import MetricsPlugin, metrics_plugin
from worker import (
    ErrorContext,
    ExecutionContext,
    Job,
    JobResult,
    Plugin,
    PluginManager,
    ResultContext,
    SubmissionContext,
)
from worker.errors import StartupRefused
from worker.models import Cost, Execution, ExecutionInfo, WorkerInfo
from worker.plugin.context import WorkerContext
from worker.stores.deadletter import DeadLetter, FileDeadLetterStore


@pytest.fixture(autouse=True)
def _single_process_values(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """on_worker_start switches prometheus-client to multiprocess mode; undo it."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    yield


def value(metrics: MetricsPlugin, name: str, **labels: str) -> float | None:
    return metrics.collector.registry.get_sample_value(name, labels)


def loaded(**options: object) -> tuple[PluginManager, MetricsPlugin]:
    manager = PluginManager()
    plugin = manager.load(metrics_plugin(**options))
    assert isinstance(plugin, MetricsPlugin)
    return manager, plugin


def run_job(manager: PluginManager, status: str = "completed") -> None:
    job = Job(code="1", gpu={"type": "t4"})
    ctx = ExecutionContext(node_id="n", pool_id="1", task_id=job.id, job_id=job.id)
    manager.execute_hook("on_execute", Execution(task="sandrun.run_job", task_id=job.id,
                                                 job=job), ctx)
    result = JobResult(id=job.id, status=status, execution_time=2.5,
                       cost=Cost(amount="0.5", currency="USD"),
                       execution=ExecutionInfo(gpu_type="t4"))
    manager.execute_hook("on_result", result, ResultContext(node_id="n", task_id=job.id,
                                                            job=job))


def test_job_metrics_with_the_seed_names() -> None:
    manager, plugin = loaded(port=0)
    manager.execute_hook("on_submit", Job(code="1", consensus="2-of-3"), SubmissionContext())
    run_job(manager)
    run_job(manager, "failed")
    assert value(plugin, "sandrun_jobs_submitted_total", gpu_type="none",
                 consensus_level="2-of-3") == 1
    assert value(plugin, "sandrun_jobs_completed_total", status="completed",
                 gpu_type="t4") == 1
    assert value(plugin, "sandrun_job_execution_duration_seconds_bucket", gpu_type="t4",
                 status="failed", le="5.0") == 1
    assert value(plugin, "sandrun_job_cost_sum", currency="USD") == 1.0
    assert value(plugin, "sandrun_jobs_in_progress") == 0
    assert value(plugin, "sandrun_job_submission_duration_seconds_count") == 1


def test_errors_and_in_progress_on_failure() -> None:
    manager, plugin = loaded(port=0)
    ctx = ExecutionContext(node_id="n", pool_id="1", task_id="t1", attempt=2)
    manager.execute_hook("on_execute", Execution(task="x", task_id="t1"), ctx)
    assert value(plugin, "sandrun_jobs_in_progress") == 1
    assert value(plugin, "sandrun_job_retries_total") == 1
    manager.execute_hook("on_error", ValueError("x"), ErrorContext(operation="execute",
                                                                   task_id="t1"))
    assert value(plugin, "sandrun_jobs_in_progress") == 0
    assert value(plugin, "sandrun_errors_total", error_type="ValueError",
                 operation="execute") == 1


def test_constant_labels_prefix_and_enabled_patterns() -> None:
    manager, plugin = loaded(port=0, prefix="fleet_", labels={"region": "eu"},
                             enabled_metrics=["jobs_*"])
    run_job(manager)
    assert value(plugin, "fleet_jobs_completed_total", region="eu", status="completed",
                 gpu_type="t4") == 1
    assert value(plugin, "fleet_job_cost_sum", region="eu", currency="USD") is None


def test_host_counters_and_hook_latency_go_to_prometheus(tmp_path: object) -> None:
    class Slow(Plugin):
        name = "slow"

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise RuntimeError("boom")

    store = FileDeadLetterStore(tmp_path)  # type: ignore[arg-type]
    manager = PluginManager(dead_letters=store)
    plugin = manager.load(metrics_plugin(port=0))
    assert isinstance(plugin, MetricsPlugin)
    manager.load(Slow)
    manager.execute_hook("on_submit", Job(code="1"), SubmissionContext())
    assert value(plugin, "sandrun_plugin_hook_errors_total", plugin="slow",
                 hook="on_submit", kind="error") == 1
    assert value(plugin, "sandrun_plugin_hook_duration_seconds_count", plugin="slow",
                 hook="on_submit") == 1
    store.add(DeadLetter(id="j", task="t", reason="r", source="retry"))
    assert value(plugin, "sandrun_dead_letter_total", source="retry") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_port_in_use_refuses_the_start_or_increments(tmp_path: object) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        info = WorkerInfo(hostname="w@h", pid=1)
        ctx = WorkerContext(hostname="w@h", pid=1)
        manager, _ = loaded(port=port, address="127.0.0.1", multiproc_dir=f"{tmp_path}/a")
        with pytest.raises(StartupRefused, match=f"metrics port {port} on 127.0.0.1 is in use"):
            manager.execute_hook("on_worker_start", info, ctx)
        manager, _ = loaded(port=port, address="127.0.0.1", port_auto_increment=20,
                                 multiproc_dir=f"{tmp_path}/b")
        started = manager.execute_hook("on_worker_start", info, ctx)
        url = started.extra["metrics_url"]
        assert url.startswith("http://127.0.0.1:") and f":{port}/" not in url
        manager.execute_hook("on_worker_stop", started, ctx)


def test_loaded_by_name_with_schema() -> None:
    manager = PluginManager()
    manager.load("metrics", {"port": 0})
    assert manager.get("metrics").manifest is not None
