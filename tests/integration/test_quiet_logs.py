"""What a real worker writes to its log about jobs: one event per job end, never the job.

Each job below carries markers that must never reach a log: in its code (a comment),
in its env (a value), in what it prints (made at run time, so it is in no message)
and in what it writes to its outputs. The worker runs with Celery's own logging
(``celery worker -l info``) and with the logging plugin's JSON (``sandrun worker``,
with no ``--without-*`` flags, as the Procfile starts it). Task events, which Flower
shows, are watched too: a job message shows a summary of the job, not the job.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from worker.client.client import Sandrun
from worker.models import Job, RetryPolicy
from worker.protocol import Publication

pytestmark = pytest.mark.slow


@dataclass
class Secrets:
    """Fresh markers for one job; ``all`` lists every one that must stay out of logs."""

    code: str = field(default_factory=lambda: f"code-{uuid.uuid4().hex}")
    env: str = field(default_factory=lambda: f"env-{uuid.uuid4().hex}")
    printed: str = field(default_factory=lambda: f"printed-{uuid.uuid4().hex}")

    @property
    def all(self) -> list[str]:
        return [self.code, self.env, self.printed]

    def program(self, body: str) -> str:
        """A job's code: the printed marker is built at run time (reversed in the code),
        so it reaches the logs only through what the job printed."""
        return (f"# {self.code}\nimport os, sys\nPRINTED = {self.printed[::-1]!r}[::-1]\n"
                f"{body}\n")


@dataclass
class Events:
    """Every Celery event on the broker while the test runs (what Flower sees)."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str, task_id: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("type") == kind and e.get("uuid") == task_id]


@pytest.fixture(scope="module", params=["celery", "json"])
def logging_by(request: pytest.FixtureRequest) -> str:
    """Who formats the worker's log: Celery, or the logging plugin (JSON)."""
    return str(request.param)


@pytest.fixture(scope="module")
def worker(logging_by: str, start_worker: WorkerFactory) -> Iterator[Worker]:
    """The only worker on the broker while its tests run (so it runs all their jobs)."""
    # jobs are tried once, unless their own policy says otherwise
    plugins: list[Any] = [{"name": "retry", "config": {"max_attempts": 1}}]
    if logging_by == "json":
        plugins.append({"name": "logging", "config": {"format": "json", "level": "info"}})
    started = start_worker(concurrency=1, name=f"quiet-{logging_by}", cli=logging_by == "json",
                           SANDRUN_PLUGINS=json.dumps(plugins))
    yield started
    started.stop()


@pytest.fixture
def client(broker: RedisServer, worker: Worker) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


@pytest.fixture
def events(client: Sandrun) -> Iterator[Events]:
    """Capture events from the first worker heartbeat (then the receiver is listening)
    to the end of the test."""
    captured = Events()
    with client.app.connection_for_read() as conn:
        receiver = client.app.events.Receiver(conn, handlers={"*": captured.seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not captured.seen:
            assert time.monotonic() < deadline, "no worker heartbeat within 10 s"
            time.sleep(0.05)
        yield captured
        receiver.should_stop = True
        thread.join(5)


def records(worker: Worker) -> list[tuple[str, dict[str, Any]]]:
    """(event, fields) of every log line: JSON records as they are, Celery's lines as
    ``[time: LEVEL/process] event key=value ...`` (values without spaces)."""
    found = []
    for line in worker.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found.append((str(record.get("event")), record))
        elif line.startswith("[") and "] " in line:
            event, *pairs = line.split("] ", 1)[1].split(" ")
            found.append((event, dict(p.split("=", 1) for p in pairs if "=" in p)))
    return found


def logged(worker: Worker, event: str, job_id: str, timeout: float = 15) -> list[dict[str, Any]]:
    """The ``event`` records of ``job_id``, once there is one: a worker logs a job's end
    just after storing its result, so the line may follow the result by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [f for e, f in records(worker) if e == event and f.get("job_id") == job_id]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def assert_never_logged(worker: Worker, secrets: Secrets) -> None:
    output = worker.output()
    assert [s for s in secrets.all if s in output] == [], output[-3000:]
    assert "succeeded in" not in output  # Celery's own line, with the whole result


def assert_summarised(events: Events, job_id: str, secrets: Secrets) -> None:
    """The job's messages (sent and received, each attempt) showed a summary of it."""
    shown = events.of("task-sent", job_id) + events.of("task-received", job_id)
    assert shown, [e.get("type") for e in events.seen]
    for event in shown:
        assert event["args"].startswith(f"Job(id='{job_id}'"), event["args"]
        assert "code=<" in event["args"] and "env=<1 vars>" in event["args"]
        assert [s for s in secrets.all if s in event["args"] + event["kwargs"]] == []


def test_a_job_printing_and_writing_secrets_is_logged_as_one_job_finished(
        client: Sandrun, worker: Worker, events: Events, tmp_path: Path) -> None:
    secrets = Secrets()
    body = ("print(PRINTED)\nopen('seen.txt', 'w').write(os.environ['TOKEN'])\n"
            "open('more.bin', 'wb').write(b'x' * 1000)")
    run = client.submit(Job(code=secrets.program(body), env={"TOKEN": secrets.env}))
    result = run.wait(timeout=60)
    assert result.status == "completed" and result.stdout == secrets.printed + "\n"
    assert run.download("seen.txt", tmp_path).read_text() == secrets.env
    assert_summarised(events, run.id, secrets)
    ends = logged(worker, "job_finished", run.id)
    assert_never_logged(worker, secrets)
    [finished] = ends
    assert finished["outcome"] == "completed" and str(finished["exit_code"]) == "0"
    assert str(finished["stdout_bytes"]) == str(len(result.stdout))
    assert str(finished["outputs"]) == "2"
    assert str(finished["output_bytes"]) == str(len(secrets.env) + 1000)
    assert {"execution_time", "cpu_seconds", "wall_seconds"} <= finished.keys()


def test_a_failing_job_printing_a_secret_to_stderr_logs_only_its_outcome(
        client: Sandrun, worker: Worker, events: Events) -> None:
    secrets = Secrets()
    body = "print(PRINTED, os.environ['TOKEN'], file=sys.stderr)\nsys.exit(1)"
    run = client.submit(Job(code=secrets.program(body), env={"TOKEN": secrets.env}))
    result = run.wait(timeout=60)
    assert result.status == "failed" and result.exit_code == 1
    assert secrets.printed in result.stderr and secrets.env in result.stderr
    assert_summarised(events, run.id, secrets)
    ends = logged(worker, "job_finished", run.id)
    assert_never_logged(worker, secrets)
    [finished] = ends
    assert finished["status"] == "failed" and finished["outcome"] == "failed"
    assert str(finished["exit_code"]) == "1" and str(finished["attempt"]) == "1"
    assert str(finished["stderr_bytes"]) == str(len(result.stderr))


def test_a_retried_job_logs_job_retried_then_job_finished_and_its_retry_message_is_a_summary(
        client: Sandrun, worker: Worker, events: Events) -> None:
    secrets = Secrets()
    body = "print(PRINTED, os.environ['TOKEN'])\nprint(PRINTED, file=sys.stderr)\nsys.exit(3)"
    policy = RetryPolicy(max_attempts=2, backoff="fixed", base_delay=0.5)
    run = client.submit(Job(code=secrets.program(body), env={"TOKEN": secrets.env},
                            retry=policy))
    result = run.wait(timeout=60)
    assert result.exit_code == 3 and result.attempts == 2
    assert_summarised(events, run.id, secrets)
    # the second attempt's message was published by the worker (Task.retry)
    assert len(events.of("task-received", run.id)) == 2
    ends = logged(worker, "job_finished", run.id)
    assert_never_logged(worker, secrets)
    [retried] = logged(worker, "job_retried", run.id)
    assert str(retried["attempt"]) == "1" and retried["error_type"] == "JobFailed"
    assert str(retried["retry_in"]) == "0.5"
    [finished] = ends
    assert str(finished["attempt"]) == "2" and finished["outcome"] == "failed"


def test_user_tasks_log_their_end_but_not_their_value(
        client: Sandrun, worker: Worker, logging_by: str, tmp_path: Path) -> None:
    if logging_by == "json":
        pytest.skip("`sandrun worker` does not load the tests' own tasks")
    secret = f"value-{uuid.uuid4().hex}"
    target = tmp_path / "lines"
    touched = Publication(task="tests.touch", task_id=uuid.uuid4().hex, queue="sandrun",
                          args=[str(target), secret])
    boom = Publication(task="tests.boom", task_id=uuid.uuid4().hex, queue="sandrun", args=[])
    client.publish(touched)
    client.publish(boom)
    assert client.app.AsyncResult(touched.task_id).get(timeout=60) == secret
    failure = client.app.AsyncResult(boom.task_id)
    assert isinstance(failure.get(timeout=60, propagate=False), ValueError)
    ends = logged(worker, "job_finished", touched.task_id)
    failures = logged(worker, "job_failed", boom.task_id)
    output = worker.output()
    assert secret not in output
    [finished] = ends
    assert finished["task"] == "tests.touch" and finished["status"] == "completed"
    [failed] = failures
    assert failed["error_type"] == "ValueError"  # a bug in a task: its traceback is kept
    assert "Traceback" in output and "boom from a user task" in output
    assert f"tests.boom[{boom.task_id}] raised" not in output  # Celery's own line
