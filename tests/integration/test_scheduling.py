"""The scheduling plugin with a real Redis, real ``celery worker`` processes and real
``sandrun beat`` processes: priority drain order, held jobs released exactly once, the
fleet-wide cap, a killed worker's lease, backpressure and fair turns.

Each test uses its own queue and stops the processes it started (the module's
fixtures stop every worker at the end, even on failure)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from plugins.auth import auth_plugin
from plugins.auth.signing import AUTH_HEADER
from plugins.auth.tokens import HMACProvider
from plugins.scheduling import SchedulingPlugin
from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker import PluginSpec
from worker.client.client import JobExecution, Sandrun
from worker.errors import QueueFull
from worker.models import Job

pytestmark = pytest.mark.slow

Client = Callable[..., Sandrun]
KEY = "integration-scheduling-key-0123456789"


def plugins(**config: Any) -> str:
    return json.dumps([{"name": "scheduling", "config": config}])


def recorder(log: Path, tag: str, sleep: float = 0.0) -> str:
    """Job code that appends ``tag start end`` (Unix seconds) to ``log``."""
    return (f"import time\nstart = time.time()\ntime.sleep({sleep})\n"
            f"open({str(log)!r}, 'a').write('{tag} %f %f\\n' % (start, time.time()))\n")


def records(log: Path) -> list[tuple[str, float, float]]:
    lines = log.read_text().split() if log.exists() else []
    return [(lines[i], float(lines[i + 1]), float(lines[i + 2])) for i in range(0, len(lines), 3)]


def wait_all(runs: list[JobExecution], timeout: float = 60) -> None:
    for run in runs:
        result = run.wait(timeout=timeout)
        assert result.status == "completed", result


@pytest.fixture
def client(broker: RedisServer) -> Iterator[Client]:
    """Producers with the scheduling plugin (config as keyword arguments), all closed."""
    made: list[Sandrun] = []

    def make(**config: Any) -> Sandrun:
        spec = PluginSpec("scheduling", {"broker_url": broker_url(broker), **config})
        made.append(Sandrun.create(broker_url=broker_url(broker), plugins=[spec]))
        return made[-1]

    yield make
    for producer in made:
        producer.close()



def test_priority_first_drains_a_backlog_most_urgent_first(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    producer, log = client(), tmp_path / "order"
    priorities = [0, 9, 3, 7, 5, 1, 8, 2, 6, 4]
    runs = [producer.submit(Job(code=recorder(log, str(p)), priority=p, queue="prio"))
            for p in priorities]
    worker = start_worker(concurrency=1, name="prio", queues="prio",
                          SANDRUN_PLUGINS=plugins())
    try:
        wait_all(runs)
    finally:
        worker.stop()
    assert [int(tag) for tag, _, _ in records(log)] == sorted(priorities, reverse=True)


def test_far_job_is_held_then_released_once_by_the_beat_and_near_one_uses_an_eta(
        client: Client, start_worker: WorkerFactory, processes: Callable[..., Worker],
        tmp_path: Path) -> None:
    config = {"eta_horizon": 1.0}
    worker = start_worker(concurrency=1, name="eta", queues="eta",
                          SANDRUN_PLUGINS=plugins(**config))
    beats = [processes("beat", "--interval", "0.1", SANDRUN_PLUGINS=plugins(**config))
             for _ in range(2)]  # two beats: each held job must still be published once
    producer, log = client(**config), tmp_path / "runs"
    plugin = producer.manager.get("scheduling")
    assert isinstance(plugin, SchedulingPlugin)
    now = datetime.now(UTC)
    far, near = now + timedelta(seconds=2.5), now + timedelta(seconds=0.5)
    held = producer.submit(Job(code=recorder(log, "held"), queue="eta", scheduled_time=far))
    soon = producer.submit(Job(code=recorder(log, "near"), queue="eta", scheduled_time=near))
    assert plugin.store.held_ids() == [held.id]
    plain = producer.submit(Job(code=recorder(log, "plain"), queue="eta"))
    try:
        wait_all([plain, soon, held])
        # The beats keep running: a later held job, released by them after the first one
        # ran, runs on the -c 1 worker after any copy of it they might have published.
        later = producer.submit(Job(code=recorder(log, "later"), queue="eta",
                                    scheduled_time=datetime.now(UTC) + timedelta(seconds=1.2)))
        wait_all([later])
    finally:
        worker.stop()
    ran = {tag: (start, end) for tag, start, end in records(log)}
    order = [tag for tag, _, _ in records(log)]
    assert order == ["plain", "near", "held", "later"], beats[0].output()
    assert ran["near"][0] >= near.timestamp() and ran["held"][0] >= far.timestamp()
    assert ran["plain"][1] < far.timestamp()  # the held job kept no slot of the -c 1 worker
    assert plugin.store.held_ids() == []
    assert not plugin.store.client.hlen("sandrun:scheduling:payload")


def test_a_held_job_keeps_its_signature_and_runs_where_signatures_are_required(
        broker: RedisServer, start_worker: WorkerFactory, processes: Callable[..., Worker],
        tmp_path: Path) -> None:
    """Producer: auth signs (on_publish -2000), then scheduling holds (-3000). The beat
    releases the stored message; a worker that runs only verified jobs runs it."""
    config = {"broker_url": broker_url(broker), "eta_horizon": 1.0}
    auth = {"name": "auth", "config": {"keys": {"k1": KEY}}}
    both = json.dumps([auth, {"name": "scheduling", "config": config}])
    worker = start_worker(concurrency=1, name="signed", queues="signed", SANDRUN_PLUGINS=both)
    processes("beat", "--interval", "0.1", SANDRUN_PLUGINS=plugins(**config))
    producer = Sandrun.create(broker_url=broker_url(broker), plugins=[
        auth_plugin(HMACProvider("k1", KEY), auto_refresh=False),
        PluginSpec("scheduling", config)])
    plugin = producer.manager.get("scheduling")
    assert isinstance(plugin, SchedulingPlugin)
    log = tmp_path / "runs"
    try:
        held = producer.submit(Job(code=recorder(log, "held"), queue="signed",
                                   scheduled_time=datetime.now(UTC) + timedelta(seconds=2)))
        assert plugin.store.held_ids() == [held.id]
        stored = json.loads(plugin.store.client.hget("sandrun:scheduling:payload", held.id) or "")
        assert AUTH_HEADER in stored["headers"]
        result = held.wait(timeout=60)
    finally:
        producer.close()
        worker.stop()
    assert result.status == "completed", result
    assert [tag for tag, _, _ in records(log)] == ["held"]


def test_beat_refuses_to_start_without_a_plugin_that_implements_it(
        broker: RedisServer, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "beat", "--once"], cwd=ROOT,
                          env=worker_env(broker, tmp_path, SANDRUN_PLUGINS="[]"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and '{"name": "scheduling"}' in proc.stderr


def test_max_concurrent_caps_running_jobs_across_worker_slots(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"max_concurrent": 1, "defer_seconds": 0.2}
    worker = start_worker(concurrency=3, name="cap", queues="cap",
                          SANDRUN_PLUGINS=plugins(**config))
    producer, log = client(), tmp_path / "runs"
    try:
        wait_all([producer.submit(Job(code=recorder(log, str(n), 0.4), queue="cap"))
                  for n in range(4)])
    finally:
        worker.stop()
    spans = sorted((start, end) for _, start, end in records(log))
    assert len(spans) == 4
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"jobs overlapped: {spans}"
    assert "job_deferred" in worker.output()


def test_a_killed_workers_lease_expires_and_the_next_job_runs(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"max_concurrent": 1, "lease_ttl": 1.5, "defer_seconds": 0.2}
    doomed = start_worker(concurrency=1, name="doomed", queues="lease",
                          SANDRUN_PLUGINS=plugins(**config))
    producer, log = client(), tmp_path / "runs"
    plugin = producer.manager.get("scheduling")
    assert isinstance(plugin, SchedulingPlugin)
    started = tmp_path / "started"
    long_job = producer.submit(Job(code=f"import time\nopen({str(started)!r}, 'w')\n"
                                        "time.sleep(30)", queue="lease"))
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, doomed.output()[-3000:]
        time.sleep(0.05)
    assert plugin.semaphore.holders("queue:lease") == [long_job.id]
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.stop()
    assert plugin.semaphore.holders("queue:lease") == [long_job.id]  # death released nothing
    expires = plugin.store.client.zscore("sandrun:scheduling:leases:queue:lease", long_job.id)
    assert expires is not None
    worker = start_worker(concurrency=1, name="heir", queues="lease",
                          SANDRUN_PLUGINS=plugins(**config))
    try:
        wait_all([producer.submit(Job(code=recorder(log, "next"), queue="lease"))], timeout=30)
    finally:
        worker.stop()
    assert long_job.id not in plugin.semaphore.holders("queue:lease")
    assert records(log)[0][1] >= expires / 1000  # it ran once the dead lease had expired


def test_queue_size_rejects_or_blocks_a_producer_until_workers_drain_the_queue(
        client: Client, start_worker: WorkerFactory) -> None:
    rejecting = client(queue_size=2)
    runs = [rejecting.submit(Job(code="1", queue="qs")) for _ in range(2)]
    with pytest.raises(QueueFull, match="queue 'qs' already holds 2"):
        rejecting.submit(Job(code="1", queue="qs"))
    impatient = client(queue_size=2, queue_full_policy="block", block_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(QueueFull, match="after waiting"):
        impatient.submit(Job(code="1", queue="qs"))
    assert time.monotonic() - started >= 0.5
    blocking = client(queue_size=2, queue_full_policy="block", block_timeout=30)
    worker = start_worker(concurrency=1, name="qs", queues="qs", ready=False,
                          SANDRUN_PLUGINS=plugins())
    try:
        started = time.monotonic()
        runs.append(blocking.submit(Job(code="1", queue="qs")))
        waited = time.monotonic() - started
        wait_all(runs)
    finally:
        worker.stop()
    assert waited > 0.2  # it waited for the worker to start and take a job


def test_fair_strategy_takes_tenants_in_turn_so_a_burst_cannot_starve_others(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"strategy": "fair", "fair_window": 1}
    worker = start_worker(concurrency=1, name="fair", queues="fair",
                          SANDRUN_PLUGINS=plugins(**config))
    producer, log = client(**config), tmp_path / "runs"

    def burst(tenant: str, n: int) -> list[JobExecution]:
        return [producer.submit(Job(code=recorder(log, f"{tenant}{i}", 0.05), queue="fair",
                                    labels={"tenant": tenant})) for i in range(n)]

    try:
        wait_all(burst("a", 8) + burst("b", 3))
    finally:
        worker.stop()
    order = [tag for tag, _, _ in records(log)]
    assert sorted(order) == [*(f"a{i}" for i in range(8)), "b0", "b1", "b2"]
    assert order[-3:] == ["a5", "a6", "a7"], order  # b's jobs did not wait behind all of a's
    assert [t for t in order if t[0] == "a"] == [f"a{i}" for i in range(8)]
