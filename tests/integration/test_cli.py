"""The ``sandrun`` CLI end to end on the embedded default broker, both transports,
and the README's demo command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Worker

pytestmark = pytest.mark.slow


def clean_env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDRUN_", "CELERY_"))}
    env.update({"SANDRUN_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)}, **extra)
    return env


def sandrun(env: dict[str, str], *args: str,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module", params=["redis", "filesystem"])
def embedded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, str]]:
    """A worker on the embedded default broker (nothing configured), for one transport."""
    state = tmp_path_factory.mktemp("st")
    env = clean_env(state, SANDRUN_EMBEDDED=request.param)
    worker = Worker([sys.executable, "-m", "worker.cli", "worker", "-c", "1", "-n", "cli@%h"],
                    env, state / "worker.log")
    try:
        worker.wait_ready()
        yield env
    finally:
        worker.stop()
        sandrun(env, "broker", "stop")
    if request.param == "redis":
        assert not (state / "redis.sock").exists()
    else:  # kombu's routing tables live beside the queue, not in the current directory
        assert (state / "control" / "sandrun.exchange").is_file()


def test_submit_wait_json_status_result_logs(embedded: dict[str, str]) -> None:
    proc = sandrun(embedded, "submit", "--code", "print(6 * 7)", "--wait", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["status"] == "completed" and result["stdout"] == "42\n"
    job_id = result["id"]
    assert sandrun(embedded, "status", job_id).stdout.strip() == "completed"
    assert json.loads(sandrun(embedded, "result", job_id, "--json").stdout)["id"] == job_id
    assert sandrun(embedded, "logs", job_id).stdout == "42\n"
    if embedded["SANDRUN_EMBEDDED"] == "filesystem":
        assert "ONE host only" in proc.stderr


def test_job_directory_failure_exit_code_and_download(embedded: dict[str, str],
                                                      tmp_path: Path) -> None:
    jobs = ROOT / "examples" / "jobs"
    proc = sandrun(embedded, "submit", str(jobs / "python-outputs"), str(jobs / "fails"),
                   "--wait", "--json")
    assert proc.returncode == 1, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["status"] for r in results] == ["completed", "failed"]
    download = sandrun(embedded, "download", results[0]["id"], "report.txt", "--dest",
                       str(tmp_path))
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "report.txt").read_text().startswith("regions=3")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = clean_env(tmp_path, SANDRUN_BROKER_URL="redis+socket:///nonexistent/r.sock")
    assert sandrun(env, "submit").returncode == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "job.json").write_text('{"entrypoint": "x.py", "timeout": 99999}')
    proc = sandrun(env, "submit", str(bad))
    assert proc.returncode == 2 and "timeout" in proc.stderr


def test_unreachable_broker_exits_3(tmp_path: Path) -> None:
    env = clean_env(tmp_path, SANDRUN_BROKER_URL="redis+socket:///nonexistent/r.sock",
                    SANDRUN_PUBLISH_RETRY_SECONDS="0.5")
    proc = sandrun(env, "submit", "--code", "print(1)")
    assert proc.returncode == 3 and "unreachable" in proc.stderr


def test_cancel_from_the_cli(embedded: dict[str, str]) -> None:
    if embedded["SANDRUN_EMBEDDED"] == "filesystem":
        pytest.skip("the filesystem transport has no broadcast, so cancel cannot reach workers")
    job_id = sandrun(embedded, "submit", "--code", "import time; time.sleep(60)").stdout.strip()
    deadline = time.monotonic() + 20
    while sandrun(embedded, "status", job_id).stdout.strip() != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert sandrun(embedded, "cancel", job_id).returncode == 0
    proc = sandrun(embedded, "result", job_id, "--wait", "30", "--json")
    assert json.loads(proc.stdout)["status"] == "cancelled"


@pytest.mark.parametrize("mode", ["auto", "filesystem"])
def test_demo_runs_on_a_machine_with_no_broker_configured(tmp_path: Path, mode: str) -> None:
    env = clean_env(tmp_path / "s", SANDRUN_EMBEDDED=mode)
    proc = sandrun(env, "demo", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every example ended as intended" in proc.stdout
    assert "downloaded report.txt: regions=3" in proc.stdout
    assert not (tmp_path / "s" / "redis.sock").exists()
    assert ("ONE host only" in proc.stderr) == (mode == "filesystem")
