"""A worker cut off from Redis for longer than a job's running lease stops the job before
the lease lapses, so that the copy that takes the lease never runs beside it; a job whose
pool process dies has its lease released at once (:mod:`worker.node.leasekeeper`).

The cut worker reaches the module's private Redis through a proxy the test cuts
(``tests.support.tcpproxy``); a second worker reaches it directly. Every run of a job
notes, in a file of its own, when it started and, every 20 ms, that it still runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from tests.integration.test_attempts import KILL_MY_POOL_PROCESS
from tests.support.tcpproxy import CuttableProxy
from worker.client.client import Sandrun
from worker.models import Job
from worker.protocol import RUN_JOB, Publication

pytestmark = pytest.mark.slow

LEASE = {"SANDRUN_RUNNING_LEASE_SECONDS": "10", "SANDRUN_REDIS_HEALTH_CHECK_INTERVAL": "2",
         "SANDRUN_REDIS_SOCKET_TIMEOUT": "3"}


@pytest.fixture(scope="module")
def proxy(broker: RedisServer) -> Iterator[CuttableProxy]:
    made = CuttableProxy(broker.socket)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def cut_worker(start_worker: WorkerFactory, proxy: CuttableProxy) -> Worker:
    return start_worker(concurrency=1, name="cut", queues="cutq", SANDRUN_BROKER_URL=proxy.url,
                        SANDRUN_RESULT_BACKEND=proxy.url, **LEASE)


@pytest.fixture(scope="module")
def direct_worker(start_worker: WorkerFactory) -> Worker:
    return start_worker(concurrency=1, name="direct", queues="directq", **LEASE)


@pytest.fixture
def client(broker: RedisServer, cut_worker: Worker, direct_worker: Worker
           ) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


def until(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(0.05)


def noting(runs: Path, gate: Path) -> str:
    """Code whose run notes its start, then every 20 ms that it runs, until ``gate``."""
    return (f"import os, time, uuid\nnote = open(os.path.join({str(runs)!r}, uuid.uuid4().hex),"
            " 'a', buffering=1)\nnote.write(f'start {time.time()}\\n')\n"
            f"while not os.path.exists({str(gate)!r}):\n"
            "    note.write(f'alive {time.time()}\\n')\n    time.sleep(0.02)\n"
            "note.write(f'end {time.time()}\\n')\nprint('done')")


def spans(runs: Path) -> list[tuple[float, float]]:
    """Each run's first and last noted time, in start order."""
    found = []
    for note in runs.iterdir():
        times = [float(line.split()[1]) for line in note.read_text().splitlines() if line]
        found.append((times[0], times[-1]))
    return sorted(found)


@pytest.fixture
def workers(cut_worker: Worker, direct_worker: Worker) -> tuple[Worker, Worker]:
    return cut_worker, direct_worker


@pytest.fixture
def store(broker: RedisServer) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(broker.socket))


def test_a_worker_cut_off_longer_than_the_lease_stops_its_job_before_a_copy_runs(
        client: Sandrun, workers: tuple[Worker, Worker], proxy: CuttableProxy,
        store: redis.Redis, tmp_path: Path) -> None:
    cut_worker, direct_worker = workers
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    runs.mkdir()
    job = Job(code=noting(runs, gate), timeout=120, queue="cutq")
    run = client.submit(job)
    until("the job to start on the cut worker", lambda: list(runs.iterdir()))
    assert (store.get(f"sandrun:lease:{job.id}") or b"").startswith(b"cut@")
    proxy.cut()
    try:
        # the broker gives the job out again while its first run goes on, unreachable
        client.publish(Publication(task=RUN_JOB, task_id=job.id, queue="directq",
                                   args=[job.model_dump(mode="json")]))
        until("the cut worker to fence its job", lambda: "job_fenced" in cut_worker.output())
        until("the copy to take the lease and run",
              lambda: len(list(runs.iterdir())) == 2)
    finally:
        proxy.mend()
    assert "delivery_waits_for_lease" in direct_worker.output()
    gate.write_text("open")
    result = run.wait(timeout=90)
    assert (result.status, result.stdout) == ("completed", "done\n")
    (_, first_last), (second_start, _) = spans(runs)[:2]
    assert first_last < second_start, "the fenced run was still running when the copy began"
    assert result.execution is not None and result.execution.node_id.startswith("direct@")


def test_a_job_whose_pool_process_dies_has_its_lease_released_before_it_comes_back(
        client: Sandrun, direct_worker: Worker, store: redis.Redis) -> None:
    job = Job(code=KILL_MY_POOL_PROCESS, queue="directq")
    result = client.submit(job).wait(timeout=60)
    assert (result.status, result.outcome) == ("failed", "worker_lost")
    lines = [line for line in direct_worker.output().splitlines() if job.id in line]
    assert not [line for line in lines if "delivery_waits_for_lease" in line], lines
    until("the lease to be released", lambda: store.get(f"sandrun:lease:{job.id}") is None,
          timeout=10)
