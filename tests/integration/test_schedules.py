"""Periodic jobs end to end: ``sandrun schedule add|list|remove`` on a private Redis, two
``sandrun beat`` processes firing a per-second schedule, and workers that run only
signed jobs, so every run went through the auth plugin's on_publish in a beat."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow

KEY = "integration-schedules-key-0123456789"
VERIFY = {"name": "auth", "config": {"keys": {"k1": KEY}}}
SIGN = {"name": "auth", "config": {"provider": {"type": "hmac", "key_id": "k1", "secret": KEY},
                                   "auto_refresh": False}}
SCHEDULING = {"name": "scheduling"}



def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_two_beats_submit_each_due_run_of_a_schedule_once_signed(
        broker: RedisServer, start_worker: WorkerFactory,
        processes: Callable[..., Worker], tmp_path: Path) -> None:
    env = worker_env(broker, tmp_path, SANDRUN_PLUGINS=json.dumps([SIGN, SCHEDULING]))

    def sandrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)

    worker = start_worker(concurrency=2, name="cron",
                          SANDRUN_PLUGINS=json.dumps([VERIFY, SCHEDULING]))
    runs = tmp_path / "runs"
    code = f"open({str(runs)!r}, 'a').write('ran\\n')"
    added = sandrun("schedule", "add", "tick", "--cron", "* * * * * *", "--code", code,
                    "--expires-in", "30s")
    assert added.returncode == 0, added.stderr
    listed = sandrun("schedule", "list", "--json")
    assert [json.loads(x)["name"] for x in listed.stdout.splitlines()] == ["tick"]
    beats = [processes("beat", "--interval", "0.2", SANDRUN_PLUGINS=env["SANDRUN_PLUGINS"])
             for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(lines(runs)) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    removed = sandrun("schedule", "remove", "tick")
    assert removed.returncode == 0, removed.stderr
    for beat in beats:
        beat.stop()
    submitted = [m for beat in beats
                 for m in re.findall(r"schedule_run_submitted.*?job_id=(tick-\d+)", beat.output())]
    per_beat = [len(re.findall("schedule_run_submitted", beat.output())) for beat in beats]
    print(f"runs submitted by each beat: {per_beat}")
    assert len(submitted) >= 5, [beat.output()[-2000:] for beat in beats]
    assert [i for i, n in Counter(submitted).items() if n > 1] == []  # none twice
    seconds = sorted(int(i.split("-")[1]) for i in submitted)
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds)))  # none skipped
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        results = [client.execution(i).wait(timeout=60) for i in submitted]
    worker.stop()
    assert all(r.status == "completed" for r in results), results  # signed: they ran
    assert len(lines(runs)) == len(submitted)  # and each ran once
    again = sandrun("schedule", "remove", "tick")
    assert again.returncode != 0 and "no schedule named 'tick'" in again.stderr


def test_schedule_add_explains_a_bad_cron_a_deadline_and_a_duplicate(
        broker: RedisServer, tmp_path: Path) -> None:
    env = worker_env(broker, tmp_path, SANDRUN_PLUGINS="[]")

    def sandrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker.cli", "schedule", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    bad = sandrun("add", "x", "--cron", "every day", "--code", "1")
    assert bad.returncode == 2 and "not a cron expression" in bad.stderr
    fixed = sandrun("add", "x", "--cron", "@daily", "--code", "1",
                    "--deadline", "2031-01-01T00:00:00Z")
    assert fixed.returncode == 2 and "--expires-in" in fixed.stderr
    assert sandrun("add", "x", "--cron", "@daily", "--code", "1").returncode == 0
    twice = sandrun("add", "x", "--cron", "@hourly", "--code", "1")
    assert twice.returncode != 0 and "already exists" in twice.stderr
    assert sandrun("add", "x", "--cron", "@hourly", "--code", "1", "--replace").returncode == 0
    assert "@hourly" in sandrun("list").stdout
    assert sandrun("remove", "x").returncode == 0
