"""The scheduling plugin on both brokers: priorities, held jobs and the beat, the
fleet-wide cap (deferrals re-published with a countdown), backpressure and fair turns.

Every test runs twice (``stack``): on a private Redis alone, and on a private virtual
host of the shared RabbitMQ with that Redis keeping the plugin's store. On RabbitMQ
queue depth comes from a passive declare, deferrals go through native delayed
delivery, and priorities need ``SANDRUN_AMQP_QUEUES=priority`` (quorum queues keep
publish order). Each test uses its own queue.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, WorkerFactory
from tests.integration.test_brokers import until, waiting
from tests.integration.test_scheduling import plugins, recorder, records
from worker import PluginSpec
from worker.client.client import JobExecution
from worker.errors import QueueFull
from worker.models import Job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def environment(stack: Stack) -> Iterator[None]:
    """The test process as a producer of this stack (plugins read the environment)."""
    saved = dict(os.environ)
    os.environ.update({"SANDRUN_BROKER_URL": stack.url, "SANDRUN_RESULT_BACKEND": stack.backend})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_all(runs: list[JobExecution], timeout: float = 60) -> None:
    for run in runs:
        assert run.wait(timeout=timeout).status == "completed"


def test_priority_first_drains_a_backlog_most_urgent_first(
        stack: Stack, start_stack_worker: WorkerFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # On RabbitMQ priorities need classic priority queues (quorum queues are FIFO there).
    monkeypatch.setenv("SANDRUN_AMQP_QUEUES", "priority")
    log, priorities = tmp_path / "order", [0, 9, 3, 7, 5, 1, 8, 2, 6, 4]
    with stack.client(plugins=[PluginSpec("scheduling")]) as producer:
        runs = [producer.submit(Job(code=recorder(log, str(p)), priority=p, queue="prio"))
                for p in priorities]
        worker = start_stack_worker(concurrency=1, name="prio", queues="prio",
                                    SANDRUN_PLUGINS=plugins(), SANDRUN_AMQP_QUEUES="priority")
        try:
            wait_all(runs)
        finally:
            worker.stop()
    assert [int(tag) for tag, _, _ in records(log)] == sorted(priorities, reverse=True)


def test_queue_size_counts_the_jobs_waiting_in_the_broker(stack: Stack) -> None:
    with stack.client(plugins=[PluginSpec("scheduling", {"queue_size": 2})]) as limited:
        runs: list[JobExecution] = [limited.submit(Job(code="1", queue="qs")) for _ in range(2)]
        until("both waiting", lambda: waiting(stack, limited, "qs") == 2)
        with pytest.raises(QueueFull, match="queue 'qs' already holds 2"):
            limited.submit(Job(code="1", queue="qs"))
    for run in runs:  # no worker consumes qs: they would wait until the vhost goes
        run.cancel()


def test_a_far_job_is_held_and_released_once_by_the_beat(
        stack: Stack, start_stack_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"eta_horizon": 1.0}
    worker = start_stack_worker(concurrency=1, name="eta", queues="eta",
                                SANDRUN_PLUGINS=plugins(**config))
    beats = [start_stack_worker(name=f"beat{i}", ready=False, command=[
        "beat", "--interval", "0.1"], SANDRUN_PLUGINS=plugins(**config)) for i in range(2)]
    log = tmp_path / "runs"
    with stack.client(plugins=[PluginSpec("scheduling", config)]) as producer:
        far = datetime.now(UTC) + timedelta(seconds=2.5)
        held = producer.submit(Job(code=recorder(log, "held"), queue="eta", scheduled_time=far))
        plain = producer.submit(Job(code=recorder(log, "plain"), queue="eta"))
        try:
            wait_all([plain, held])
        finally:
            for process in (worker, *beats):
                process.stop()
    ran = {tag: start for tag, start, _ in records(log)}
    assert [tag for tag, _, _ in records(log)] == ["plain", "held"]
    assert ran["held"] >= far.timestamp()


def test_max_concurrent_defers_jobs_over_the_cap(
        stack: Stack, start_stack_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"max_concurrent": 1, "defer_seconds": 0.2}
    worker = start_stack_worker(concurrency=3, name="cap", queues="cap",
                                SANDRUN_PLUGINS=plugins(**config))
    log = tmp_path / "runs"
    with stack.client(plugins=[]) as producer:
        try:
            wait_all([producer.submit(Job(code=recorder(log, str(n), 0.4), queue="cap"))
                      for n in range(3)], timeout=20)
        except Exception:
            pytest.fail(worker.output()[-6000:])
        finally:
            worker.stop()
    spans = sorted((start, end) for _, start, end in records(log))
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"jobs overlapped: {spans}"
    assert "job_deferred" in worker.output()


def test_fair_turns_count_the_jobs_waiting_in_the_broker(
        stack: Stack, start_stack_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"strategy": "fair", "fair_window": 1}
    log = tmp_path / "runs"
    with stack.client(plugins=[PluginSpec("scheduling", config)]) as producer:
        runs = [producer.submit(Job(code=recorder(log, f"{tenant}{i}", 0.05), queue="fair",
                                    labels={"tenant": tenant}))
                for tenant, n in (("a", 4), ("b", 2)) for i in range(n)]
        # fair_window 1: one job in the broker, the rest wait in Redis for their turn
        until("one job in the broker", lambda: waiting(stack, producer, "fair") == 1)
        worker = start_stack_worker(concurrency=1, name="fair", queues="fair",
                                    SANDRUN_PLUGINS=plugins(**config))
        try:
            wait_all(runs)
        finally:
            worker.stop()
    order = [tag for tag, _, _ in records(log)]
    # a0 went to the broker at submit, a1 was next in the ring when b joined it; from
    # then on the tenants take turns, never more than one job in the broker
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3"], order
