"""One metrics endpoint per worker, summing every prefork child, surviving a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory, port: int) -> Worker:
    plugins = [{"name": "metrics", "config": {"port": port, "address": "127.0.0.1"}}]
    return start_worker(concurrency=3, SANDRUN_PLUGINS=json.dumps(plugins))


def test_one_scrape_counts_jobs_of_every_child(worker: Worker, broker: RedisServer,
                                               port: int) -> None:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        runs = [client.job().code("print(1)").submit() for _ in range(30)]
        results = [run.wait(timeout=60) for run in runs]
    assert {r.status for r in results} == {"completed"}
    assert len({r.execution.pool_id for r in results if r.execution}) > 1
    samples = scrape(port)
    assert sample(samples, "sandrun_jobs_completed_total", status="completed",
                  gpu_type="none") == 30
    assert sample(samples, "sandrun_job_execution_duration_seconds_count", status="completed",
                  gpu_type="none") == 30
    assert sample(samples, "sandrun_job_queue_wait_seconds_count") == 30
    assert sample(samples, "sandrun_jobs_in_progress") == 0


def test_endpoint_survives_a_killed_child_and_in_progress_returns_to_zero(
        worker: Worker, broker: RedisServer, port: int) -> None:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        run = client.job().code("import time; time.sleep(3)").submit()
        deadline = time.monotonic() + 20
        while sample(scrape(port), "sandrun_jobs_in_progress") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        busy = [pid for pid in worker.pool_pids() if any(
            Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
        assert len(busy) == 1
        os.kill(busy[0], signal.SIGKILL)
        assert "sandrun_jobs_in_progress" in urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert run.wait(timeout=60).status == "completed"
    deadline = time.monotonic() + 10
    while sample(scrape(port), "sandrun_jobs_in_progress") != 0:
        assert time.monotonic() < deadline, scrape(port)
        time.sleep(0.1)


def test_sandrun_workers_lists_the_metrics_url(worker: Worker, broker: RedisServer,
                                               port: int, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "workers"], cwd=ROOT,
                          env={**worker_env(broker, tmp_path), "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"http://127.0.0.1:{port}/metrics" in proc.stdout and "sandrun" in proc.stdout


AUTH_KEY = "metrics-order-key-0123456789abcdef"


@pytest.mark.parametrize("order", [("auth", "metrics"), ("metrics", "auth")])
def test_metrics_of_every_plugin_are_exported_whatever_the_load_order(
        start_worker: WorkerFactory, broker: RedisServer, order: tuple[str, str]) -> None:
    from plugins.auth import auth_plugin
    from plugins.auth.tokens import HMACProvider

    port = free_port()
    configs = {"auth": {"keys": {"k1": AUTH_KEY}},
               "metrics": {"port": port, "address": "127.0.0.1"}}
    plugins = [{"name": name, "config": configs[name]} for name in order]
    queue = f"order-{order[0]}"  # its own queue: the module's other worker serves sandrun
    worker = start_worker(concurrency=1, name=queue, queues=queue,
                          SANDRUN_PLUGINS=json.dumps(plugins))
    try:
        signer = auth_plugin(HMACProvider("k1", AUTH_KEY), auto_refresh=False)
        with Sandrun.create(broker_url=broker_url(broker), plugins=[signer]) as client:
            run = client.job().code("print(1)").queue(queue).submit()
            assert run.wait(timeout=60).status == "completed"
        samples = scrape(port)
        assert sample(samples, "sandrun_auth_verified_total") == 1, order
        assert sample(samples, "sandrun_jobs_completed_total", status="completed",
                      gpu_type="none") == 1
    finally:
        worker.stop()
