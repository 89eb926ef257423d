"""``sandrun workers`` shows what real workers advertise: two workers with their fields
and the job one of them runs; a worker whose main process is stopped (SIGSTOP) is
marked late, beats again once continued, and leaves the listing when it stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from tests.integration.test_metrics import free_port
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow

BEAT = {"SANDRUN_HEARTBEAT_INTERVAL": "1"}
CARDS = "t4:16:7.5:12.0*2"


@pytest.fixture
def client(broker: RedisServer) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


@pytest.fixture
def fleet(start_worker: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Worker, Worker, int]]:
    """w1 (one slot, queue sandrun, the metrics plugin) and w2 (two slots, queue other,
    two declared cards), stopped after the test."""
    port = free_port()
    plugins = [{"name": "metrics", "config": {"port": port, "address": "127.0.0.1"}}]
    one = start_worker(name="w1", concurrency=1, cli=True, SANDRUN_PLUGINS=json.dumps(plugins),
                       SANDRUN_STATE_DIR=str(tmp_path_factory.mktemp("w1")), **BEAT)
    two = start_worker(name="w2", concurrency=2, cli=True, queues="other", SANDRUN_GPUS=CARDS,
                       SANDRUN_STATE_DIR=str(tmp_path_factory.mktemp("w2")), **BEAT)
    yield one, two, port
    for worker in (one, two):
        with_continued(worker, worker.stop)


def with_continued(worker: Worker, then: Callable[[], object]) -> None:
    """SIGCONT (a stopped worker cannot stop), then ``then``."""
    if worker.proc.poll() is None:
        os.kill(worker.proc.pid, signal.SIGCONT)
    then()


def listing(broker: RedisServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "workers", *args], cwd=ROOT,
                          env=worker_env(broker, tmp_path, COLUMNS="300"), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def by_name(broker: RedisServer, tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    """``sandrun workers --json``, parsed, by worker name (w1, w2)."""
    document = json.loads(listing(broker, tmp_path, "--json", *args).stdout)
    return {entry["name"].split("@")[0]: entry for entry in document["workers"]}


def until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(0.2)


def test_two_workers_are_listed_with_what_they_advertise(
        broker: RedisServer, client: Sandrun, fleet: tuple[Worker, Worker, int],
        tmp_path: Path) -> None:
    _, _, port = fleet
    run = client.job().code("import time; time.sleep(120)").timeout(150).submit()
    until("running", lambda: run.status() == "running")
    until("the running job advertised",
          lambda: by_name(broker, tmp_path)["w1"]["running_jobs"] == 1)
    shown = by_name(broker, tmp_path, "--late-after", "30")
    one, two = shown["w1"], shown["w2"]
    assert set(shown) == {"w1", "w2"}
    assert one["queues"] == ["sandrun"] and {"other", "other.gpu.t4"} <= set(two["queues"])
    assert (one["concurrency"], two["concurrency"]) == (1, 2)
    assert one["gpus"] == [] and [card["type"] for card in two["gpus"]] == ["t4", "t4"]
    assert one["metrics_url"] == f"http://127.0.0.1:{port}/metrics" and two["metrics_url"] is None
    assert two["running_jobs"] == 0 and one["host"] == two["host"] == os.uname().nodename
    for entry in (one, two):
        assert entry["late"] is False and entry["late_after_s"] == 30
        assert entry["heartbeat_interval_s"] == 1 and entry["last_heartbeat"]
    assert by_name(broker, tmp_path)["w1"]["late_after_s"] == 3  # 3 x the interval
    table = listing(broker, tmp_path, "--late-after", "30").stdout
    assert "2 worker(s), 0 late" in table and "t4:16:7.5:12.0, t4:16:7.5:12.0" in table
    run.cancel()
    assert run.wait(timeout=30).status == "cancelled"


def test_a_stopped_worker_is_late_until_it_is_continued_and_gone_once_stopped(
        broker: RedisServer, fleet: tuple[Worker, Worker, int], tmp_path: Path) -> None:
    _, two, _ = fleet
    until("both listed", lambda: set(by_name(broker, tmp_path)) == {"w1", "w2"})
    os.kill(two.proc.pid, signal.SIGSTOP)
    try:
        until("w2 late", lambda: by_name(broker, tmp_path, "--late-after", "2")["w2"]["late"])
        assert "LATE" in listing(broker, tmp_path, "--late-after", "2").stdout
    finally:
        os.kill(two.proc.pid, signal.SIGCONT)
    until("w2 beating again",
          lambda: not by_name(broker, tmp_path, "--late-after", "30")["w2"]["late"])
    assert two.stop() == 0
    assert set(by_name(broker, tmp_path)) == {"w1"}
