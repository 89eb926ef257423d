"""Retries through Celery and dead letters, with a real worker and the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker.client.client import Sandrun
from worker.models import Job, RetryPolicy
from worker.stores.livelogs import live_key

pytestmark = pytest.mark.slow

RETRY = {"name": "retry", "config": {"max_attempts": 3, "backoff": "fixed", "base_delay": 0.2}}


def flaky(counter: Path, succeed_from: int, gate: Path | None = None) -> str:
    """Code that fails until its ``succeed_from``-th run (or until ``gate`` exists)."""
    gate_check = f" or os.path.exists({str(gate)!r})" if gate else ""
    return (f"import os\nn = int(open({str(counter)!r}).read()) + 1 if os.path.exists("
            f"{str(counter)!r}) else 1\nopen({str(counter)!r}, 'w').write(str(n))\n"
            f"print('run', n)\nraise SystemExit(0 if n >= {succeed_from}{gate_check} else 3)")


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory) -> Worker:
    return start_worker(concurrency=2, SANDRUN_PLUGINS=json.dumps([RETRY]))


@pytest.fixture
def client(broker: RedisServer, worker: Worker) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


def cli(broker: RedisServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT,
                          env=worker_env(broker, tmp_path), capture_output=True, text=True,
                          timeout=60, check=False)


def test_failing_job_is_retried_until_it_succeeds(client: Sandrun, broker: RedisServer,
                                                  tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    run = client.job().code(flaky(counter, 3)).submit()
    result = run.wait(timeout=60)
    assert (result.status, result.attempts, result.stdout) == ("completed", 3, "run 3\n")
    assert counter.read_text() == "3"
    # every attempt's output and end reached the live stream, the retried ones included
    # (their result is never stored, so what was to ride with it is written on their way out)
    stream = redis.Redis(unix_socket_path=str(broker.socket)).xrange(live_key(run.id))
    assert sorted((f[b"k"], f[b"d"]) for _, f in stream) == sorted(
        pair for n in (1, 2, 3) for pair in ((b"out", f"run {n}\n".encode()), (b"end", b"")))


def test_a_policy_of_more_than_four_attempts_gets_them_all(client: Sandrun,
                                                           tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    policy = RetryPolicy(max_attempts=6, backoff="fixed", base_delay=0.05, jitter=False)
    job = Job(code=flaky(counter, 6), retry=policy)
    result = client.submit(job).wait(timeout=60)
    assert (result.status, result.attempts, counter.read_text()) == ("completed", 6, "6")


def test_exhausted_job_is_dead_lettered_and_replayable(client: Sandrun, broker: RedisServer,
                                                       tmp_path: Path) -> None:
    counter, gate = tmp_path / "runs", tmp_path / "gate"
    run = client.job().code(flaky(counter, 99, gate)).submit(correlation_id="flaky-1")
    result = run.wait(timeout=60)
    assert (result.status, result.attempts, result.exit_code) == ("failed", 3, 3)
    assert result.context is not None and result.context.correlation_id == "flaky-1"
    listed = cli(broker, tmp_path, "dead", "list", "--json")
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    mine = [x for x in letters if x["id"] == run.id]
    assert len(mine) == 1 and [a["attempt"] for a in mine[0]["attempts"]] == [1, 2, 3]
    shown = json.loads(cli(broker, tmp_path, "dead", "show", run.id).stdout)
    assert shown["reason"].startswith("gave up after 3 attempt(s)")

    gate.write_text("open")
    replayed = cli(broker, tmp_path, "dead", "replay", run.id)
    assert replayed.returncode == 0, replayed.stderr
    again = client.execution(run.id).wait(timeout=60)
    assert again.status == "completed" and again.stdout == "run 4\n"
    assert again.context is not None and again.context.correlation_id == "flaky-1"
    assert cli(broker, tmp_path, "dead", "show", run.id).returncode == 1


def test_user_task_is_retried_then_dead_lettered_with_its_arguments(
        client: Sandrun, broker: RedisServer, tmp_path: Path) -> None:
    handle = client.app.send_task("tests.boom")
    with pytest.raises(Exception, match="boom"):
        handle.get(timeout=60)
    shown = json.loads(cli(broker, tmp_path, "dead", "show", str(handle.id)).stdout)
    assert shown["task"] == "tests.boom" and len(shown["attempts"]) == 3
