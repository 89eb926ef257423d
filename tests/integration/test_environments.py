"""Requirements and environments through a real worker and Redis, with the sandbox's
defaults (a view of its own, network isolation required): a job's requirements come
from the worker's wheel cache, the second job with the same set reuses the layer, one
the cache cannot satisfy ends ``environment_error``; ``sandrun environments`` lists
the operator's environments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, WorkerFactory, broker_url
from tests.support.wheels import make_wheel
from worker.client.client import Sandrun
from worker.models import Job

pytestmark = pytest.mark.slow

JOB = ("import sandrun_tiny\nlines = open('/proc/net/dev').read().splitlines()[2:]\n"
       "print(sandrun_tiny.VERSION, [l.split(':')[0].strip() for l in lines])")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory job users may traverse (pytest's tmp_path is 0700 to them)."""
    path = Path(tempfile.mkdtemp(prefix="sandrun-envtest-"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_requirements_from_the_wheel_cache_through_a_worker(
        broker: RedisServer, start_worker: WorkerFactory, shared_dir: Path,
        tmp_path: Path) -> None:
    make_wheel(tmp_path / "wheels", "sandrun-tiny", "1.0", "sandrun_tiny")
    worker = start_worker(concurrency=1, name="envs", queues="envs",
                          SANDRUN_WHEEL_CACHE=str(tmp_path / "wheels"),
                          SANDRUN_LAYERS_DIR=str(shared_dir / "layers"),
                          SANDRUN_JOB_UIDS="200000-200999", SANDRUN_JOB_USER="nobody",
                          SANDRUN_FILESYSTEM_ISOLATION="auto",
                          SANDRUN_NETWORK_ISOLATION="required")
    producer = Sandrun.create(broker_url=broker_url(broker))
    try:
        starts = []
        for _ in range(2):
            began = time.monotonic()
            result = producer.submit(Job(code=JOB, requirements=["sandrun-tiny"],
                                         queue="envs")).wait(timeout=120)
            starts.append(time.monotonic() - began - (result.execution_time or 0.0))
            assert result.status == "completed", result
            assert result.stdout == "1.0 ['lo']\n"  # installed, and no network but loopback
            assert "network" in (result.isolation or "").split("+")
        assert len(list((shared_dir / "layers").iterdir())) == 1  # the second reused it
        print(f"\nsubmit to start through a worker: new layer {starts[0]:.3f}s, "
              f"reused {starts[1]:.3f}s")

        missing = producer.submit(Job(code="print('ran')", requirements=["not-cached>=1"],
                                      queue="envs")).wait(timeout=120)
        assert (missing.status, missing.outcome) == ("failed", "environment_error"), missing
        assert missing.error is not None and "not-cached>=1" in missing.error.message
        assert missing.stdout == ""
    finally:
        producer.close()
        worker.stop()


def test_sandrun_environments_lists_name_interpreter_and_version(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(envs / "py-env")],
                   check=True)
    (envs / "not-an-env").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
    cmd = [sys.executable, "-m", "worker.cli", "environments", "--json"]
    listed = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True,
                            env={**env, "SANDRUN_ENVIRONMENTS_DIR": str(envs)}).stdout
    rows = [json.loads(line) for line in listed.splitlines()]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert rows == [{"name": "py-env", "interpreter": str(envs / "py-env" / "bin" / "python3"),
                     "python_version": version}]
    unset = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                           check=False)
    assert unset.returncode == 2 and "SANDRUN_ENVIRONMENTS_DIR" in unset.stderr
