"""Flower against a private Redis: jobs show up in its API, behind basic auth."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from tests.integration.test_metrics import free_port
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except urllib.error.URLError:
        return 0, b""  # not listening yet


def tasks_listed(base: str) -> dict[str, dict[str, object]]:
    status, body = get(f"{base}/api/tasks", "ops:s3cret")
    return json.loads(body) if status == 200 else {}


def watching(base: str, client: Sandrun, timeout: float = 30) -> None:
    """Return once Flower receives task events: it subscribes only after it starts
    serving, so run probe jobs until it lists one of them."""
    deadline = time.monotonic() + timeout
    probes: set[str] = set()
    while True:
        probe = client.job().code("print('probe')").submit()
        probe.wait(timeout=30)
        probes.add(probe.id)
        for _ in range(10):  # its events follow its stored result closely
            if probes & tasks_listed(base).keys():
                return
            time.sleep(0.1)
        assert time.monotonic() < deadline, "Flower never listed a job"


def test_flower_lists_jobs_with_basic_auth_and_401_without(
        start_worker: WorkerFactory, broker: RedisServer, tmp_path: Path) -> None:
    refused = subprocess.run([sys.executable, "-m", "worker.cli", "flower"], cwd=ROOT,
                             env=worker_env(broker, tmp_path), capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 2 and "FLOWER_BASIC_AUTH" in refused.stderr
    start_worker(name="watched", concurrency=1)
    port = free_port()
    env = worker_env(broker, tmp_path, FLOWER_BASIC_AUTH="ops:s3cret")
    flower = Worker([sys.executable, "-m", "worker.cli", "flower", "--port", str(port),
                     "--address", "127.0.0.1"], env, tmp_path / "flower.log")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while get(f"{base}/healthcheck")[0] != 200:
            assert time.monotonic() < deadline, flower.output()[-2000:]
            time.sleep(0.2)
        with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
            watching(base, client)
            ids = [client.job().code(f"print({n})").submit().id for n in range(3)]
            for job_id in ids:
                client.execution(job_id).wait(timeout=30)
        assert get(f"{base}/api/tasks")[0] == 401
        assert get(f"{base}/api/tasks", "ops:wrong")[0] == 401
        deadline = time.monotonic() + 20
        while True:
            status, body = get(f"{base}/api/tasks", "ops:s3cret")
            tasks = json.loads(body) if status == 200 else {}
            if all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids):
                break
            assert time.monotonic() < deadline, (status, tasks)
            time.sleep(0.3)
        assert {tasks[i]["name"] for i in ids} == {"sandrun.run_job"}
        # Flower shows a summary of each job, not its code (worker.protocol.job_reprs)
        for job_id in ids:
            shown = f"Job(id='{job_id}', interpreter='python3', code=<8 bytes>)"
            assert tasks[job_id]["args"] == shown
    finally:
        flower.stop()
