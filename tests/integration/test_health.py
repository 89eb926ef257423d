"""Heartbeat and readiness files of a real worker, and the probes that read them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, WorkerFactory, worker_env

pytestmark = pytest.mark.slow


def probe(env: dict[str, str], *args: str) -> int:
    return subprocess.run([sys.executable, "-m", "worker.cli", "probe", *args], env=env,
                          cwd=ROOT, capture_output=True, timeout=60, check=False).returncode


def test_heartbeat_while_consuming_ready_once_connected_removed_on_shutdown(
        start_worker: WorkerFactory, broker: RedisServer, tmp_path: Path) -> None:
    beat, ready = tmp_path / "hb", tmp_path / "ready"
    files = {"SANDRUN_HEARTBEAT_FILE": str(beat), "SANDRUN_READY_FILE": str(ready)}
    env = worker_env(broker, tmp_path, **files)
    assert probe(env, "ready") == 1 and probe(env, "live") == 1
    worker = start_worker(name="health", concurrency=1, SANDRUN_HEARTBEAT_INTERVAL="0.3",
                          **files)
    assert ready.exists() and beat.exists()
    first = beat.stat().st_mtime
    time.sleep(1.0)
    second = beat.stat().st_mtime
    assert 0.3 <= second - first <= 1.0
    assert probe(env, "ready") == 0 and probe(env, "live", "--max-age", "2") == 0
    assert worker.stop() == 0
    assert not ready.exists() and not beat.exists()
    assert probe(env, "ready") == 1 and probe(env, "live") == 1


def test_probe_finds_the_only_worker_files_under_the_state_dir(tmp_path: Path,
                                                              broker: RedisServer) -> None:
    health = tmp_path / "health"
    health.mkdir()
    (health / "w1@host.heartbeat").touch()
    (health / "w1@host.ready").touch()
    env = worker_env(broker, tmp_path)
    assert probe(env, "live") == 0 and probe(env, "ready") == 0
    (health / "w2@host.ready").touch()
    assert probe(env, "ready") == 2
