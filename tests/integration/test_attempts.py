"""A job that keeps killing its worker process stops after its max attempts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow

KILL_MY_POOL_PROCESS = """
import os, signal
launcher = os.getppid()
with open(f"/proc/{launcher}/stat") as fh:
    pool_process = int(fh.read().rsplit(")", 1)[1].split()[1])
os.kill(pool_process, signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory) -> Worker:
    return start_worker(concurrency=2, SANDRUN_MAX_ATTEMPTS="2")


@pytest.fixture
def client(broker: RedisServer, worker: Worker) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


def test_user_task_that_exits_its_worker_stops_after_max_attempts(client: Sandrun) -> None:
    handle = client.app.send_task("tests.die")
    with pytest.raises(Exception, match="WorkerLost: attempt 1 was delivered 2 times"):
        handle.get(timeout=60)


def test_sandboxed_job_that_kills_its_pool_process_is_failed(client: Sandrun,
                                                             worker: Worker) -> None:
    before = set(worker.pool_pids())
    result = client.job().code(KILL_MY_POOL_PROCESS).submit().wait(timeout=60)
    assert (result.status, result.outcome) == ("failed", "worker_lost")
    assert result.attempts == 1 and result.error is not None
    assert "delivered 2 times" in result.error.message
    assert set(worker.pool_pids()) != before
    follow_up = client.job().code("print('still serving')").submit().wait(timeout=30)
    assert follow_up.stdout == "still serving\n"
