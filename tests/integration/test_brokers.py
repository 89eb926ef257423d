"""The fleet's key paths on both brokers: Redis alone, and RabbitMQ with Redis for results.

Every test runs twice (``stack``): on the module's private Redis, and on a private
virtual host of the shared RabbitMQ (quorum job queues, delivery limit 1 so a poison
job is stopped after two deliveries) with that Redis as result backend and store.
Real ``celery worker`` processes, a real CLI and Flower, no broker mocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, Stack, Worker, WorkerFactory, worker_env
from tests.integration.test_attempts import KILL_MY_POOL_PROCESS
from tests.integration.test_flower import get, tasks_listed, watching
from tests.integration.test_metrics import free_port
from tests.integration.test_retry import flaky
from worker.broker.amqp import queue_depth
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow

RETRY = {"name": "retry", "config": {"max_attempts": 3, "backoff": "fixed", "base_delay": 0.2}}
# Both brokers' settings for every process of the module, the test process included (a
# queue's arguments are fixed when it is first declared, so all must agree).
MODULE_ENV = {"SANDRUN_AMQP_DELIVERY_LIMIT": "1", "SANDRUN_MAX_ATTEMPTS": "10"}
SHOW_DEVICES = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"


@pytest.fixture(scope="module", autouse=True)
def environment(stack: Stack) -> Iterator[None]:
    """The test process as a producer of this stack: the plugins it loads read the
    broker and backend from the environment, like every producer's."""
    saved = dict(os.environ)
    os.environ.update({**MODULE_ENV, "SANDRUN_BROKER_URL": stack.url,
                       "SANDRUN_RESULT_BACKEND": stack.backend})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def worker(start_stack_worker: WorkerFactory) -> Worker:
    return start_stack_worker(concurrency=2, SANDRUN_PLUGINS=json.dumps([RETRY]), **MODULE_ENV)


@pytest.fixture
def client(stack: Stack, worker: Worker) -> Iterator[Sandrun]:
    with stack.client(plugins=[]) as made:
        yield made


def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(0.1)


def cli(stack: Stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT,
                          env=worker_env(stack, tmp_path, **MODULE_ENV), capture_output=True,
                          text=True, timeout=60, check=False)


def waiting(stack: Stack, client: Sandrun, queue: str) -> int:
    """Jobs waiting in the broker for ``queue``."""
    if stack.kind == "rabbitmq":
        return queue_depth(client.app, queue)
    redis = stack.redis.client()
    return sum(int(redis.llen(key)) for key in redis.scan_iter(f"{queue}*", _type="list")
               if key == queue.encode() or key.startswith(f"{queue}\x06\x16".encode()))


def test_submit_and_wait_for_a_job_and_a_user_task(client: Sandrun) -> None:
    result = client.job().code("print('hi')").submit().wait(timeout=30)
    assert (result.status, result.stdout) == ("completed", "hi\n")
    assert client.app.send_task("tests.add", args=[2, 3]).get(timeout=30) == 5


def test_a_failing_job_is_retried_with_a_countdown_until_it_succeeds(
        client: Sandrun, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    result = client.job().code(flaky(counter, 3)).submit().wait(timeout=60)
    assert (result.status, result.attempts, result.stdout) == ("completed", 3, "run 3\n")


def test_an_exhausted_job_is_dead_lettered_and_replayed_through_the_cli(
        stack: Stack, client: Sandrun, tmp_path: Path) -> None:
    counter, gate = tmp_path / "runs", tmp_path / "gate"
    run = client.job().code(flaky(counter, 99, gate)).submit()
    assert run.wait(timeout=60).status == "failed"
    listed = cli(stack, tmp_path, "dead", "list", "--json")
    mine = [json.loads(line) for line in listed.stdout.splitlines()
            if json.loads(line)["id"] == run.id]
    assert len(mine) == 1 and mine[0]["source"] == "retry"
    gate.write_text("open")
    replayed = cli(stack, tmp_path, "dead", "replay", run.id)
    assert replayed.returncode == 0, replayed.stderr
    assert client.execution(run.id).wait(timeout=60).stdout == "run 4\n"


def test_a_job_that_keeps_killing_its_worker_is_stopped_by_the_broker_and_replayed(
        stack: Stack, client: Sandrun, worker: Worker, tmp_path: Path) -> None:
    if stack.kind != "rabbitmq":
        pytest.skip("a delivery limit on the broker is RabbitMQ's; on Redis Sandrun's own "
                    "count stops it (tests/integration/test_attempts.py)")
    cured = tmp_path / "cured"
    code = f"import os\nif not os.path.exists({str(cured)!r}):\n" + "".join(
        f"    {line}\n" for line in KILL_MY_POOL_PROCESS.strip().splitlines()) + "print('ok')\n"
    run = client.job().code(code).submit()
    # Delivery limit 1: delivered, its pool process killed, delivered again, killed again,
    # then the quorum queue hands it to sandrun.dead and a worker stores the letter (the
    # worker's own count, SANDRUN_MAX_ATTEMPTS=10, is far from stopping it).

    def letter() -> dict[str, Any]:
        shown = cli(stack, tmp_path, "dead", "show", run.id)
        return json.loads(shown.stdout) if shown.returncode == 0 else {}

    try:
        until("dead-lettered by the broker", lambda: letter().get("source") == "rabbitmq",
              timeout=60)
    except AssertionError:
        pytest.fail(f"no broker dead letter; the worker said:\n{worker.output()[-4000:]}")
    found = letter()
    assert "delivery limit" in found["reason"] and found["job"]["id"] == run.id
    assert waiting(stack, client, "sandrun") == 0
    cured.write_text("fixed")
    replayed = cli(stack, tmp_path, "dead", "replay", run.id)
    assert replayed.returncode == 0, replayed.stderr
    assert client.execution(run.id).wait(timeout=60).stdout == "ok\n"


def test_a_running_job_is_cancelled_over_remote_control(client: Sandrun) -> None:
    run = client.job().code("import time; time.sleep(120)").timeout(150).submit()
    until("running", lambda: run.status() == "running")
    assert run.cancel() == "running"
    assert run.wait(timeout=30).status == "cancelled"


def test_a_job_cancelled_while_queued_is_skipped_by_a_worker_started_later(
        client: Sandrun, stack: Stack, start_stack_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The cancel record lives in the result backend's Redis, also with RabbitMQ."""
    mark = tmp_path / "ran"
    run = client.job().code(f"open({str(mark)!r}, 'w').write('ran')").queue("cancelled").submit()
    assert run.cancel() == "queued"  # nothing consumes "cancelled" yet
    later = start_stack_worker(concurrency=1, name="later", queues="cancelled", **MODULE_ENV)
    try:
        until("skipped", lambda: any("job_cancelled_skipped" in line and run.id in line
                                     for line in later.output().splitlines()))
    finally:
        later.stop()
    assert run.wait(timeout=10).status == "cancelled" and not mark.exists()


def test_sandrun_workers_lists_the_worker(stack: Stack, worker: Worker,
                                               tmp_path: Path) -> None:
    listed = cli(stack, tmp_path, "workers")
    assert listed.returncode == 0, listed.stderr
    assert "1 worker(s), 0 late" in listed.stdout and "w1@" in listed.stdout


def test_gpu_jobs_wait_in_their_queue_for_a_gpu_worker(
        stack: Stack, client: Sandrun, start_stack_worker: WorkerFactory) -> None:
    cpu = start_stack_worker(name="cpu", concurrency=1, cli=True, queues="gpuq", **MODULE_ENV)
    # a GPU job is refused at submit unless a worker with its card is registered: this
    # one is, and the sleeping job holds its only slot
    gpu = start_stack_worker(name="gpu", concurrency=1, cli=True, queues="gpuq",
                             SANDRUN_GPUS='[{"type": "t4", "count": 2}]', **MODULE_ENV)
    try:
        sleeper = client.job().code("import time; time.sleep(120)").timeout(150) \
            .queue("gpuq").gpu("t4").submit()
        until("the sleeper running", lambda: sleeper.status() == "running")
        gpu_run = client.job().code(SHOW_DEVICES).queue("gpuq").gpu("t4").submit()
        cpu_result = client.job().code(SHOW_DEVICES).queue("gpuq").submit().wait(timeout=30)
        assert cpu_result.execution and cpu_result.execution.node_id.startswith("cpu@")
        until("counted in its queue", lambda: waiting(stack, client, "gpuq.gpu.t4") == 1)
        assert gpu_run.status() == "queued"
        sleeper.cancel()
        result = gpu_run.wait(timeout=30)
        assert result.execution and result.execution.node_id.startswith("gpu@")
        assert result.execution.gpu_type == "t4"
    finally:
        gpu.stop()
        cpu.stop()


def test_flower_follows_jobs_behind_basic_auth(stack: Stack, client: Sandrun, worker: Worker,
                                               tmp_path: Path) -> None:
    port = free_port()
    env = worker_env(stack, tmp_path, FLOWER_BASIC_AUTH="ops:s3cret", **MODULE_ENV)
    flower = Worker([sys.executable, "-m", "worker.cli", "flower", "--port", str(port),
                     "--address", "127.0.0.1"], env, tmp_path / "flower.log")
    try:
        base = f"http://127.0.0.1:{port}"
        until("Flower serving", lambda: get(f"{base}/healthcheck")[0] == 200)
        watching(base, client)
        run = client.job().code("print(7)").submit()
        run.wait(timeout=30)
        assert get(f"{base}/api/tasks")[0] == 401
        until("the job listed as finished", lambda: tasks_listed(base).get(run.id, {}).get(
            "state") == "SUCCESS", timeout=20)
    finally:
        flower.stop()
