"""A job's correlation id, tenant and baggage on a real worker: in the stored result (and
``sandrun result --json``), in every log line of the job, in its dead letter; a value
changed after signing is rejected."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from plugins.auth import auth_plugin
from plugins.auth.tokens import HMACProvider
from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker import Plugin, Publication, PublishContext, hook
from worker.client.client import Sandrun
from worker.protocol import CORRELATION_HEADER
from worker.stores.deadletter import dead_letter_store_for

pytestmark = pytest.mark.slow

KEY = "context-integration-key-0123456789ab"
PRODUCER = [{"name": "auth", "config": {"provider": {"type": "hmac", "key_id": "k1",
                                                     "secret": KEY}}}]


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "worker.jsonl"


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory, log_file: Path) -> Worker:
    plugins = [{"name": "auth", "config": {"keys": {"k1": KEY}}},
               {"name": "retry", "config": {"max_attempts": 1}},
               {"name": "logging", "config": {"format": "json", "level": "debug",
                                              "outputs": ["stderr", str(log_file)]}}]
    return start_worker(concurrency=2, SANDRUN_PLUGINS=json.dumps(plugins))


@pytest.fixture
def client(broker: RedisServer, worker: Worker) -> Sandrun:
    signer = auth_plugin(HMACProvider("k1", KEY), auto_refresh=False)
    with Sandrun.create(broker_url=broker_url(broker), plugins=[signer]) as made:
        yield made  # type: ignore[misc]


def job_lines(log_file: Path, job_id: str) -> list[dict[str, object]]:
    """The job's log lines, once its last one (``job_finished``, logged after its result
    is stored) is written."""
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
        mine = [line for line in lines if line.get("job_id") == job_id]
        if any(line["event"] == "job_finished" for line in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def test_the_context_is_in_the_result_and_every_log_line_of_the_job(
        client: Sandrun, log_file: Path) -> None:
    run = client.submit(client.job().code("print(1)").build(), correlation_id="order-17",
                        baggage={"team": "ml", "origin": "nightly run"})
    result = run.wait(timeout=60)
    assert result.status == "completed", result
    assert result.context is not None
    assert (result.context.correlation_id, result.context.tenant) == ("order-17", "k1")
    assert result.context.baggage == {"team": "ml", "origin": "nightly run"}
    lines = job_lines(log_file, run.id)
    assert {line["event"] for line in lines} >= {"job_started", "job_finished"}
    assert lines and all(line.get("correlation_id") == "order-17" and line.get("tenant") == "k1"
                         and line.get("baggage") == {"team": "ml", "origin": "nightly run"}
                         for line in lines), lines


def test_a_dead_letter_keeps_the_context(client: Sandrun) -> None:
    run = client.submit(client.job().code("raise SystemExit(3)").labels(
        {"tenant": "acme"}).build(), correlation_id="doomed-1")
    assert run.wait(timeout=60).status == "failed"
    letter = dead_letter_store_for(str(client.app.conf.result_backend)).get(run.id)
    assert letter is not None and letter.source == "retry"
    assert letter.context is not None
    assert (letter.context.correlation_id, letter.context.tenant) == ("doomed-1", "acme")


class Tamper(Plugin):
    """Changes the correlation id after the signature, as a broker writer could."""

    name = "tamper"

    @hook(priority=-2500)
    def on_publish(self, publication: Publication, context: PublishContext) -> Publication:
        return replace(publication, headers={**publication.headers,
                                             CORRELATION_HEADER: "someone-else"})


def test_a_context_changed_after_signing_is_rejected(broker: RedisServer,
                                                     worker: Worker) -> None:
    signer = auth_plugin(HMACProvider("k1", KEY), auto_refresh=False)
    with Sandrun.create(broker_url=broker_url(broker), plugins=[signer, Tamper()]) as client:
        result = client.job().code("print('never')").submit().wait(timeout=60)
    assert (result.status, result.stdout) == ("rejected", "")
    assert result.error is not None and "tampered" in result.error.message
    assert "ctx" in result.error.message


def test_the_cli_sends_the_context_and_result_json_shows_it(
        broker: RedisServer, worker: Worker, tmp_path: Path) -> None:
    env = {**worker_env(broker, tmp_path), "SANDRUN_PLUGINS": json.dumps(PRODUCER)}

    def sandrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    submitted = sandrun("submit", "--code", "print(2)", "--correlation-id", "cli-9",
                        "--tenant", "acme", "--baggage", "team=ml", "--baggage", "k=a=b",
                        "--json")
    assert submitted.returncode == 0, submitted.stderr
    queued = json.loads(submitted.stdout)
    assert queued["correlation_id"] == "cli-9"
    shown = sandrun("result", queued["id"], "--wait", "60", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["context"] == {
        "correlation_id": "cli-9", "tenant": "acme", "baggage": {"team": "ml", "k": "a=b"}}
    bad = sandrun("submit", "--code", "print(3)", "--baggage", "novalue")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
