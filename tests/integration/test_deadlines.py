"""Deadlines with a real Redis, real workers and real beats: a job not started by its
deadline never runs and ends ``expired``, wherever it waited (the broker, a deferral
over ``max_concurrent``, the scheduling plugin's held set, a fair queue)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker import PluginSpec
from worker.client.client import JobExecution, Sandrun
from worker.errors import InvalidJob
from worker.models import Job
from worker.protocol import RUN_JOB, Publication

pytestmark = pytest.mark.slow

Client = Callable[..., Sandrun]


def plugins(**config: Any) -> str:
    return json.dumps([{"name": "scheduling", "config": config}])


def marker(path: Path, sleep: float = 0.0) -> str:
    """Job code whose side effect is creating ``path`` (after sleeping ``sleep`` s)."""
    return f"import time\ntime.sleep({sleep})\nopen({str(path)!r}, 'w').write('ran')\n"


def wait_until_past(deadline: datetime) -> None:
    """Let the deadline pass (a precondition, not an assertion about what happened)."""
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.05)


def assert_expired(run: JobExecution, side_effect: Path) -> None:
    result = run.wait(timeout=60)
    assert result.status == "expired" and result.outcome == "expired", result
    assert run.status() == "expired"
    assert not side_effect.exists()  # expired is final: nothing can run the job after it


@pytest.fixture
def client(broker: RedisServer) -> Iterator[Client]:
    made: list[Sandrun] = []

    def make(**config: Any) -> Sandrun:
        specs = ([PluginSpec("scheduling", {"broker_url": broker_url(broker), **config})]
                 if config else [])
        made.append(Sandrun.create(broker_url=broker_url(broker), plugins=specs))
        return made[-1]

    yield make
    for producer in made:
        producer.close()



def test_a_job_queued_past_its_deadline_is_never_run_and_ends_expired(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    producer = client()
    late, timely = tmp_path / "late", tmp_path / "timely"
    expiring = producer.job().code(marker(late)).queue("dl").expires_in(0.5).submit()
    lasting = producer.job().code(marker(timely)).queue("dl").expires_in("10m").submit()
    assert producer.execution(expiring.id).status() == "queued"
    wait_until_past(datetime.now(UTC) + timedelta(seconds=0.5))
    worker = start_worker(concurrency=1, name="dl", queues="dl")
    try:
        assert_expired(expiring, late)
        assert lasting.wait(timeout=60).status == "completed" and timely.exists()
    finally:
        worker.stop()


def test_a_message_that_lost_its_expires_is_still_expired_by_the_jobs_own_deadline(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    """A broker writer's copy (or a hand-built publish) without Celery's expires: the
    worker reads the deadline in the job itself and never runs it."""
    producer, late = client(), tmp_path / "late"
    job = Job(code=marker(late), queue="dx", deadline=datetime.now(UTC) + timedelta(seconds=0.5))
    producer.publish(Publication(task=RUN_JOB, task_id=job.id, queue="dx",
                                 args=[job.model_dump(mode="json", exclude_defaults=True)]))
    wait_until_past(job.deadline or datetime.now(UTC))
    worker = start_worker(concurrency=1, name="dx", queues="dx")
    try:
        run = producer.execution(job.id)
        assert_expired(run, late)
        assert run.wait(timeout=5).error is not None
    finally:
        worker.stop()
    assert "job_expired" in worker.output()


def test_an_unsigned_copy_past_its_deadline_is_rejected_not_stored_expired(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    """The job's own deadline is checked after on_execute: a broker writer's unsigned
    message cannot get an ``expired`` result stored, only the auth plugin's rejection."""
    keys = {"k1": "deadline-test-key-0123456789abcdef0123"}
    verify = json.dumps([{"name": "auth", "config": {"keys": keys}}])
    producer, late = client(), tmp_path / "late"
    job = Job(code=marker(late), queue="du", deadline=datetime.now(UTC) + timedelta(seconds=0.5))
    producer.publish(Publication(task=RUN_JOB, task_id=job.id, queue="du",
                                 args=[job.model_dump(mode="json", exclude_defaults=True)]))
    wait_until_past(job.deadline or datetime.now(UTC))
    worker = start_worker(concurrency=1, name="du", queues="du", SANDRUN_PLUGINS=verify)
    try:
        result = producer.execution(job.id).wait(timeout=60)
    finally:
        worker.stop()
    assert result.status == "rejected", result
    assert not late.exists()


def test_a_deadline_already_past_is_refused_at_submit(client: Client) -> None:
    producer = client()
    with pytest.raises(InvalidJob, match=r"deadline.*has already passed"):
        producer.job().code("1").deadline(datetime.now(UTC) - timedelta(seconds=1)).submit()


def test_a_job_deferred_over_max_concurrent_past_its_deadline_ends_expired(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"max_concurrent": 1, "defer_seconds": 0.2}
    worker = start_worker(concurrency=2, name="dd", queues="dd",
                          SANDRUN_PLUGINS=plugins(**config))
    producer, busy, late = client(**config), tmp_path / "busy", tmp_path / "late"
    try:
        holder = producer.job().code(marker(busy, sleep=3)).queue("dd").submit()
        started = time.monotonic() + 30
        while holder.status() != "running":
            assert time.monotonic() < started, "the first job never started"
            time.sleep(0.05)
        deferred = producer.job().code(marker(late)).queue("dd").expires_in(1).submit()
        assert_expired(deferred, late)
        assert holder.wait(timeout=60).status == "completed"
    finally:
        worker.stop()
    assert "job_deferred_over_cap" in worker.output()  # it did wait as a deferral


def test_a_held_job_the_beat_claims_past_its_deadline_is_never_published(
        client: Client, start_worker: WorkerFactory, processes: Callable[..., Worker],
        tmp_path: Path) -> None:
    config = {"eta_horizon": 0.5}
    worker = start_worker(concurrency=1, name="dh", queues="dh",
                          SANDRUN_PLUGINS=plugins(**config))
    producer, late = client(**config), tmp_path / "late"
    start = datetime.now(UTC) + timedelta(seconds=1.5)
    deadline = start + timedelta(seconds=0.5)
    run = producer.job().code(marker(late)).queue("dh").schedule(start).deadline(
        deadline).submit()
    store = producer.manager.get("scheduling").store  # type: ignore[union-attr]
    assert run.id in store.held_ids()
    wait_until_past(deadline)  # no beat ran meanwhile: it is still held, past its deadline
    beat = processes("beat", "--once", SANDRUN_PLUGINS=plugins(**config))
    try:
        assert beat.proc.wait(timeout=60) == 0, beat.output()
        assert_expired(run, late)
        assert run.id not in store.held_ids()
        assert "job_expired" in beat.output()
    finally:
        worker.stop()


def test_a_fair_job_waiting_its_turn_past_its_deadline_ends_expired(
        client: Client, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"strategy": "fair", "fair_window": 1}
    producer, first, late = client(**config), tmp_path / "first", tmp_path / "late"
    ahead = producer.job().code(marker(first)).queue("df").labels({"tenant": "a"}).submit()
    waiting = producer.job().code(marker(late)).queue("df").labels(
        {"tenant": "b"}).expires_in(0.5).submit()
    assert producer.manager.get("scheduling").store.pending("df") == 1  # type: ignore[union-attr]
    wait_until_past(datetime.now(UTC) + timedelta(seconds=0.5))
    worker = start_worker(concurrency=1, name="df", queues="df",
                          SANDRUN_PLUGINS=plugins(**config))
    try:
        assert ahead.wait(timeout=60).status == "completed" and first.exists()
        assert_expired(waiting, late)  # moved by the first job's on_result, past its deadline
    finally:
        worker.stop()


def test_cli_submit_takes_expires_in_and_deadline_and_explains_bad_ones(
        broker: RedisServer, tmp_path: Path) -> None:
    env = worker_env(broker, tmp_path)

    def sandrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker.cli", "submit", "--code", "1",
                               "--json", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    ok = sandrun("--expires-in", "30s")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "queued"
    bad = sandrun("--expires-in", "soon")
    assert bad.returncode == 2 and "duration such as 30s" in bad.stderr
    naive = sandrun("--deadline", "2031-01-01T00:00:00")
    assert naive.returncode == 2 and "no timezone" in naive.stderr
    past = sandrun("--deadline", "2020-01-01T00:00:00Z")
    assert past.returncode != 0 and "has already passed" in past.stderr
    both = sandrun("--deadline", "2031-01-01T00:00:00Z", "--expires-in", "5m")
    assert both.returncode == 2 and "not both" in both.stderr
