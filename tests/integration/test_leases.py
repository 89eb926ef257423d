"""Running leases with real workers, on both brokers: a second delivery of a running job
waits instead of running, an expired lease lets a copy run, and a delivery that finds
the job finished ends with its stored result (:mod:`worker.stores.leases`)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Stack, Worker, WorkerFactory
from worker.broker.urls import redis_url
from worker.client.client import Sandrun
from worker.models import Job
from worker.protocol import RUN_JOB, Publication

pytestmark = pytest.mark.slow

MODULE_ENV = {"SANDRUN_RUNNING_LEASE_SECONDS": "30"}


@pytest.fixture(scope="module", autouse=True)
def environment(stack: Stack) -> Iterator[None]:
    """The test process as a producer of this stack (its queues declared the same way)."""
    saved = dict(os.environ)
    os.environ.update({"SANDRUN_BROKER_URL": stack.url, "SANDRUN_RESULT_BACKEND": stack.backend})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def worker(start_stack_worker: WorkerFactory) -> Worker:
    return start_stack_worker(concurrency=2, **MODULE_ENV)


@pytest.fixture
def client(stack: Stack, worker: Worker) -> Iterator[Sandrun]:
    with stack.client(plugins=[]) as made:
        yield made


@pytest.fixture
def store(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(redis_url(stack.backend))


def until(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(0.05)


def released(store: redis.Redis, job_id: str) -> None:
    """The job's lease goes once its result is stored (just after: a client may read the
    result first)."""
    until("the lease to be released", lambda: store.get(f"sandrun:lease:{job_id}") is None,
          timeout=10)


def gated(runs: Path, gate: Path) -> str:
    """Code that notes each run in ``runs``, then waits for ``gate`` to exist."""
    return (f"import os, time\nopen({str(runs)!r}, 'a').write('run\\n')\n"
            f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\nprint('done')")


def events(worker: Worker, event: str, task_id: str) -> list[str]:
    return [line for line in worker.output().splitlines()
            if event in line and task_id in line]


def again(client: Sandrun, job: Job) -> None:
    """Publish the job's message once more, as a broker that gives it back would."""
    client.publish(Publication(task=RUN_JOB, task_id=job.id, queue="sandrun",
                               args=[job.model_dump(mode="json")]))


def test_a_second_delivery_of_a_running_job_waits_and_ends_with_the_stored_result(
        client: Sandrun, worker: Worker, store: redis.Redis, tmp_path: Path) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    job = Job(code=gated(runs, gate), timeout=60)
    run = client.submit(job)
    until("the job to start", runs.exists)
    holder = store.get(f"sandrun:lease:{job.id}")
    assert holder is not None and re.fullmatch(rb"w1@.+:\d+", holder), holder
    again(client, job)  # the pool's second process gets the copy while the first runs
    until("the copy to wait for the lease", lambda: events(worker, "delivery_waits_for_lease",
                                                           job.id))
    assert runs.read_text() == "run\n", "the copy ran beside the first delivery"
    gate.write_text("open")
    result = run.wait(timeout=60)
    assert (result.status, result.stdout) == ("completed", "done\n")
    until("the copy to come back and find the result", lambda: [
        line for line in events(worker, "job_finished", job.id) if "already_finished" in line])
    assert runs.read_text() == "run\n"
    assert store.get(f"sandrun:lease:{job.id}") is None, "the lease outlived the job"


def test_an_expired_lease_lets_the_copy_take_it_and_run(
        client: Sandrun, worker: Worker, store: redis.Redis, tmp_path: Path) -> None:
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    gate.write_text("open")
    job = Job(code=gated(runs, gate), timeout=60)
    # a delivery whose worker died holds the lease: it lapses in 2 s, never renewed
    store.set(f"sandrun:lease:{job.id}", "w9@gone:4242", px=2000)
    result = client.submit(job).wait(timeout=60)
    assert (result.status, runs.read_text()) == ("completed", "run\n")
    waited = events(worker, "delivery_waits_for_lease", job.id)
    assert waited and "w9@gone:4242" in waited[0]
    released(store, job.id)


def test_a_copy_that_waits_many_times_still_comes_back(
        client: Sandrun, worker: Worker, store: redis.Redis, tmp_path: Path) -> None:
    """On RabbitMQ each wait goes through the native delay queues (1 s, then 2 s, then
    4 s, then what is left: a delay queue is passed through a second time), which drop a
    message that carries their x-death headers back as a dead-letter cycle."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    gate.write_text("open")
    job = Job(code=gated(runs, gate), timeout=60)
    store.set(f"sandrun:lease:{job.id}", "w9@gone:4243", px=9500)  # lapses in 9.5 s
    result = client.submit(job).wait(timeout=60)
    assert (result.status, runs.read_text()) == ("completed", "run\n")
    assert len(events(worker, "delivery_waits_for_lease", job.id)) >= 4
    released(store, job.id)


def test_a_lease_held_by_another_live_delivery_is_renewed_by_nobody_else(
        client: Sandrun, worker: Worker, store: redis.Redis, tmp_path: Path) -> None:
    """A running job's lease is renewed by its own worker's main process: its ttl is
    given back while the job runs, and the lease is gone once its result is stored."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    job = Job(code=gated(runs, gate), timeout=60)
    run = client.submit(job)
    until("the job to start", runs.exists)
    key = f"sandrun:lease:{job.id}"
    store.pexpire(key, 15_000)  # as if its last renewal were 15 s ago
    until("the worker to renew the lease", lambda: store.pttl(key) > 15_000, timeout=30)
    gate.write_text("open")
    assert run.wait(timeout=60).status == "completed"
    released(store, job.id)
