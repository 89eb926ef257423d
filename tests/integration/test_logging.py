"""A real worker's whole output, parsed line by line as JSON."""

from __future__ import annotations

import json

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import WorkerFactory, broker_url
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow
MARKER = "a-line-only-the-job-prints"


def test_worker_output_is_json_and_job_lines_carry_the_job_context(
        start_worker: WorkerFactory, broker: RedisServer) -> None:
    plugins = [{"name": "logging", "config": {"format": "json", "level": "info"}}]
    worker = start_worker(concurrency=2, cli=True, name="jsonlog",
                          SANDRUN_PLUGINS=json.dumps(plugins))
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        ok = client.job().code(f"print({MARKER!r})").submit()
        bad = client.job().code("raise SystemExit(2)").submit()
        ok.wait(timeout=30)
        bad.wait(timeout=30)
    worker.stop()
    lines = [line for line in worker.output().splitlines() if line.strip()]
    # Every line is JSON but Celery's shutdown notice, which it prints outside logging.
    assert [x for x in lines if not x.startswith("{")] == ["worker: Warm shutdown (MainProcess)"]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any("ready" in r["event"] for r in records)
    assert any(r["event"] == "worker_starting" and r["queues"] == ["sandrun"] for r in records)
    for job_id in (ok.id, bad.id):
        mine = [r for r in records if r.get("job_id") == job_id]
        assert {"job_started", "job_finished"} <= {r["event"] for r in mine}
        for record in mine:
            assert record["task_id"] == job_id and record["attempt"] == 1
            assert record["queue"] == "sandrun" and record["node"].startswith("jsonlog@")
            assert "timestamp" in record and "level" in record
    failed = [r for r in records if r["event"] == "operation_failed"]
    assert failed and failed[0]["job_id"] == bad.id and failed[0]["error_type"] == "JobFailed"
    outside = [r for r in records if r["event"].startswith("celery@")]
    assert all("job_id" not in r for r in outside)
    assert MARKER not in worker.output()  # worker logs never carry a job's output
    assert any(r["event"].endswith(": <not logged>") and ok.id in r["event"] for r in records)


def test_celerys_own_logging_keeps_job_output_out_too(start_worker: WorkerFactory,
                                                      broker: RedisServer) -> None:
    """No logging plugin: Celery's plain lines (``-l info``), still without the result."""
    worker = start_worker(concurrency=1, name="plainlog")
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        run = client.job().code(f"print({MARKER!r})").submit()
        assert run.wait(timeout=30).stdout == f"{MARKER}\n"
    worker.stop()
    assert f"Task sandrun.run_job[{run.id}] succeeded in" in worker.output()
    assert MARKER not in worker.output()
