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


#: File timestamps come from the kernel's coarse clock: each may lag by up to one tick
#: (1-10 ms), so two of them can read a little closer together than the beats were.
TIMESTAMP_GRAIN = 0.01


def beats(path: Path, count: int, timeout: float = 20) -> list[float]:
    """The mtimes of the next ``count`` refreshes of ``path``, watched far more often than
    it beats: consecutive beats, whatever the phase at which watching begins."""
    seen = [path.stat().st_mtime_ns]
    deadline = time.monotonic() + timeout
    while len(seen) <= count:
        assert time.monotonic() < deadline, f"the heartbeat stopped; refreshes seen: {seen}"
        time.sleep(0.005)
        if (mtime := path.stat().st_mtime_ns) != seen[-1]:
            seen.append(mtime)
    return [ns / 1e9 for ns in seen[1:]]


def test_heartbeat_while_consuming_ready_once_connected_removed_on_shutdown(
        start_worker: WorkerFactory, broker: RedisServer, tmp_path: Path) -> None:
    beat, ready = tmp_path / "hb", tmp_path / "ready"
    files = {"SANDRUN_HEARTBEAT_FILE": str(beat), "SANDRUN_READY_FILE": str(ready)}
    env = worker_env(broker, tmp_path, **files)
    assert probe(env, "ready") == 1 and probe(env, "live") == 1
    worker = start_worker(name="health", concurrency=1, SANDRUN_HEARTBEAT_INTERVAL="0.3",
                          **files)
    assert ready.exists() and beat.exists()
    first, second = beats(beat, 2)
    assert 0.3 - TIMESTAMP_GRAIN <= second - first <= 1.0
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
