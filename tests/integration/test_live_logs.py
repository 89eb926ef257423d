"""Live logs and progress through a real worker and a private Redis: ``run.logs(follow=
True)``, ``sandrun logs -f`` and ``run.progress()`` / ``sandrun status`` while the job runs.

Every job here holds before it ends until the test opens its *gate* (a file the job
waits for), so "this arrived while the job ran" is an ordering the test makes, not a
timing it hopes for: whatever the test received before opening the gate, it received
before the job ended. A job whose gate never opens exits 3 after a while.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.events.state import State

from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker.client.client import JobExecution, Sandrun
from worker.sandbox.live import CHUNK_BYTES
from worker.stores.livelogs import live_key

pytestmark = pytest.mark.slow
CAPPED_QUEUE = "capped"
CAP_BYTES = 64 << 10
GATED = """
import os, sys, time
def wait_for_gate():
    for _ in range(1200):
        if os.path.exists(os.environ["GATE"]):
            return
        time.sleep(0.05)
    sys.exit(3)
def progress(line):
    os.write(int(os.environ["SANDRUN_PROGRESS_FD"]), line.encode() + b"\\n")
"""
TICKING = GATED + """
for i in range(6):
    print(f"tick {i}", flush=True)
    time.sleep(0.5)
wait_for_gate()
print("done", file=sys.stderr, flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


@pytest.fixture(scope="module")
def workers(start_worker: WorkerFactory) -> list[Worker]:
    plain = start_worker(concurrency=2, name="live", SANDRUN_PLUGINS=json.dumps(
        [{"name": "retry", "config": {"max_attempts": 1}}]))
    capped = start_worker(concurrency=1, name="capped", queues=CAPPED_QUEUE,
                          SANDRUN_LIVE_OUTPUT_BYTES=str(CAP_BYTES),
                          SANDRUN_LIVE_OUTPUT_ENTRIES="10", SANDRUN_LIVE_OUTPUT_TTL="120",
                          SANDRUN_PLUGINS=json.dumps(
                              [{"name": "retry", "config": {"max_attempts": 1}}]))
    return [plain, capped]


@pytest.fixture
def client(broker: RedisServer, workers: list[Worker]) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


def gated(client: Sandrun, code: str, gate: Path, queue: str | None = None,
          **env: str) -> JobExecution:
    builder = client.job().code(code).env({"GATE": str(gate), **env}).timeout(90)
    return (builder.queue(queue) if queue else builder).submit()


def until(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout}s for {what}")
        time.sleep(0.05)


def test_a_job_printing_for_3s_is_followed_line_by_line(client: Sandrun,
                                                        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = gated(client, TICKING, gate)
    received = []
    for line in run.logs(follow=True, timeout=120):
        if not gate.exists():
            # the job cannot end before the gate opens: this line came while it ran
            assert run.result() is None and run.status() == "running"
        received.append(line)
        if line.text == "tick 5\n":
            gate.touch()
    assert [(line.stream, line.text) for line in received] == [
        *(("stdout", f"tick {i}\n") for i in range(6)), ("stderr", "done\n")]
    result = run.result()
    assert result is not None and result.status == "completed"
    assert result.stdout == "".join(f"tick {i}\n" for i in range(6))


def sandrun_cli(broker: RedisServer, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = worker_env(broker, tmp_path / "cli-state")
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("exit_code", "cli_code"), [(0, 0), (5, 1)])
def test_sandrun_logs_follow_streams_and_exits_with_the_jobs_status(
        client: Sandrun, broker: RedisServer, tmp_path: Path, exit_code: int,
        cli_code: int) -> None:
    gate = tmp_path / "gate"
    run = gated(client, TICKING, gate, EXIT=str(exit_code))
    proc = sandrun_cli(broker, tmp_path, "logs", "-f", run.id, "--wait-timeout", "120")
    watchdog = threading.Timer(180, proc.kill)  # the reads below block until it exits
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "tick 0\n" and run.result() is None  # printed while the job runs
        gate.touch()
        # read on through the same buffered streams (communicate() would read the pipes
        # beneath them and miss what readline already buffered); stderr is a few bytes
        rest = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr is not None else ""
        proc.wait(timeout=120)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert first + rest == "".join(f"tick {i}\n" for i in range(6))
    assert err == "done\n"
    assert proc.returncode == cli_code
    result = run.result()
    assert result is not None and result.exit_code == exit_code


@pytest.fixture
def events(client: Sandrun) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event on the broker during the test (what Flower sees), from the
    first worker heartbeat on (then the receiver is listening)."""
    seen: list[dict[str, Any]] = []
    with client.app.connection_for_read() as conn:
        receiver = client.app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
        thread.start()
        until("a worker heartbeat", lambda: bool(seen))
        yield seen
        receiver.should_stop = True
        thread.join(5)


def test_progress_reaches_status_while_the_job_runs(
        client: Sandrun, broker: RedisServer, tmp_path: Path,
        events: list[dict[str, Any]]) -> None:
    gate = tmp_path / "gate"
    run = gated(client, GATED + "progress('4/10 training')\nwait_for_gate()\n", gate)
    until("the job's progress", lambda: run.progress() is not None)
    until("the task-progress event", lambda: any(
        e.get("type") == "task-progress" and e.get("uuid") == run.id for e in events))
    flower = State()  # Flower's own model of the cluster, fed the events it would get
    for event in list(events):
        flower.event(event)
    assert flower.tasks[run.id].state == "PROGRESS"
    assert (flower.tasks[run.id].percent, flower.tasks[run.id].message) == (40.0, "training")
    progress = run.progress()
    assert progress is not None and run.result() is None
    assert (progress.percent, progress.done, progress.total, progress.message) == (
        40.0, 4, 10, "training")
    assert run.status() == "running"
    shown = sandrun_cli(broker, tmp_path, "status", run.id).communicate(timeout=60)[0]
    assert shown == "running 40% (step 4/10: 'training')\n"
    gate.touch()
    assert run.wait(timeout=60).status == "completed"
    assert run.progress() is None and run.status() == "completed"


FLOOD = GATED + """
chunk = ("x" * 1023 + "\\n").encode()
for _ in range(4 << 10):  # 4 MiB of output, far past the live budget
    sys.stdout.buffer.write(chunk)
sys.stdout.flush()
fd = int(os.environ["SANDRUN_PROGRESS_FD"])
progress("7/8 real")
bad = [b"nan%", b"inf%", b"150%", b"11/10 past", b"3/0", b"-1/2", b"1e9%", b"9" * 400 + b"%",
       b"2/3 " + b"m" * 1000, b"\\x00\\xff garbage", b"4/5 " + b"\\x1b[31m" * 60]
for _ in range(2000):  # a flood of reports none of which is valid
    os.write(fd, b"\\n".join(bad) + b"\\n")
os.write(fd, b"9" * 100000)  # and a line without end
wait_for_gate()
"""


def test_a_flooding_job_is_capped_in_live_output_and_progress(
        client: Sandrun, broker: RedisServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = gated(client, FLOOD, gate, queue=CAPPED_QUEUE)
    lines = run.logs(follow=True, timeout=120)
    streamed = 0
    for line in lines:  # until the worker's note that the budget is spent
        if line.stream == "sandrun":
            assert "live output stopped after 65536 bytes" in line.text
            break
        streamed += len(line.text)
    assert streamed <= CAP_BYTES and run.result() is None
    until("the job's progress", lambda: run.progress() is not None)
    assert run.progress() is not None and run.progress().describe() == (  # type: ignore[union-attr]
        "88% (step 7/8: 'real')")
    store = broker.client()
    ttl = store.ttl(live_key(run.id))
    assert 0 < ttl <= 120  # the stream expires
    kept = store.xrange(live_key(run.id))
    assert sum(len(fields[b"d"]) for _, fields in kept) <= CAP_BYTES + 200
    assert all(len(fields[b"d"]) <= CHUNK_BYTES for _, fields in kept)
    gate.touch()
    assert list(lines) == []  # nothing more after the note, and the follow ends
    result = run.wait(timeout=60)
    assert result.status == "completed" and result.stdout_truncated
    assert run.progress() is None


def test_worker_logs_carry_no_job_output(workers: list[Worker], client: Sandrun,
                                         tmp_path: Path) -> None:
    secret = f"printed-{uuid.uuid4().hex}"
    gate = tmp_path / "gate"
    gate.touch()
    code = GATED + f"print({secret[::-1]!r}[::-1]); progress('1/2 ' + {secret[::-1]!r}[::-1])"
    run = gated(client, code, gate)
    assert [line.text for line in run.logs(follow=True, timeout=60)] == [secret + "\n"]
    for worker in workers:
        assert secret not in worker.output()
