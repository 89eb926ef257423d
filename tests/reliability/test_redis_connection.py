"""The connection to Redis breaking while a job starts: the job is delivered again,
never stored as a failure.

The worker's broker is its private Redis on the unix socket; its result backend and
stores (where the task base class counts deliveries and looks for a stored result)
are the same Redis through a TCP proxy the test cuts (``tests.support.tcpproxy``).
With the proxy cut, a job reaches the worker, beginning its attempt cannot reach
Redis (redis-py's own retries included), and the worker must hand the message back
(``delivery_requeued``) rather than let Celery store the ConnectionError as the
job's FAILURE. Once the proxy is mended the job runs, once, and completes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer, private_redis
from tests.integration.conftest import Worker, broker_url, worker_env
from tests.support.tcpproxy import CuttableProxy
from worker.client.client import Sandrun


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    with private_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[CuttableProxy]:
    made = CuttableProxy(own_redis.socket)
    try:
        yield made
    finally:
        made.close()


def wait_for_log(worker: Worker, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.output():
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the worker's log:\n{worker.output()[-3000:]}")
        time.sleep(0.1)


def test_redis_unreachable_at_job_start_requeues_the_job(
        tmp_path: Path, own_redis: RedisServer, proxy: CuttableProxy) -> None:
    marks = tmp_path / "runs.txt"
    env = worker_env(own_redis, tmp_path / "state", SANDRUN_RESULT_BACKEND=proxy.url)
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", "1", "-n",
            "cut@%h", "-Q", "sandrun", "--without-mingle", "--without-gossip", "-l", "info"]
    worker = Worker(argv, env, tmp_path / "worker.log")
    client = Sandrun.create(broker_url=broker_url(own_redis),
                            result_backend=broker_url(own_redis), plugins=[])
    try:
        worker.wait_ready(timeout=60)
        # one job first, so the pool process holds live connections through the proxy
        assert client.job().code("print('warm')").submit().wait(timeout=60).status == "completed"
        proxy.cut()
        run = client.job().code(
            f"open({str(marks)!r}, 'a').write('ran\\n'); print('done')").submit()
        wait_for_log(worker, "delivery_requeued", timeout=60)
        assert not marks.exists(), "the job ran although its attempt could not begin"
        assert proxy.refused > 0, "the worker did not try to reconnect through the proxy"
        proxy.mend()
        result = run.wait(timeout=60)
        meta = client.app.backend.get_task_meta(run.id)
    finally:
        client.close()
        worker.stop()
    assert meta["status"] == "SUCCESS", meta
    assert result.status == "completed" and result.stdout.strip() == "done", result
    assert marks.read_text() == "ran\n", "the job must run exactly once"
    assert "job_failed" not in worker.output()
