"""One trace from ``submit`` to the stored result: the producer's spans in the SDK's
in-memory exporter, a real worker's in a file, joined by the ``traceparent`` header."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plugins.auth import auth_plugin
from plugins.auth.tokens import HMACProvider
from plugins.otel import opentelemetry_plugin
from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url
from tests.support.spans import ENV, read_spans
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow

KEY = "otel-integration-key-0123456789abcdef"
RUN_SPAN = "run/sandrun.run_job"


@pytest.fixture(scope="module")
def span_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans") / "worker-spans.jsonl"


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory, span_file: Path) -> Worker:
    plugins = [{"name": "auth", "config": {"keys": {"k1": KEY}}},
               {"name": "retry", "config": {"max_attempts": 1}},
               {"name": "opentelemetry", "config": {
                   "exporter": "tests.support.spans:file_exporter", "span_processor": "simple",
                   "service_name": "sandrun-worker"}}]
    return start_worker(concurrency=2, SANDRUN_PLUGINS=json.dumps(plugins),
                        **{ENV: str(span_file)})


def worker_spans(span_file: Path, trace_id: str) -> list[dict[str, Any]]:
    """The worker's spans of ``trace_id``, once its run span (ended after the result is
    stored) has been exported."""
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in read_spans(span_file) if s["context"]["trace_id"] == trace_id]
        if any(s["name"] == RUN_SPAN for s in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    named: dict[str, dict[str, Any]] = {}
    for span in spans:
        assert span["name"] not in named, f"two spans named {span['name']}"
        named[span["name"]] = span
    return named


def test_one_trace_from_submit_to_the_stored_result(broker: RedisServer, worker: Worker,
                                                    span_file: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plugins = [auth_plugin(HMACProvider("k1", KEY), auto_refresh=False),
               opentelemetry_plugin(tracer_provider=provider)]
    with Sandrun.create(broker_url=broker_url(broker), plugins=plugins) as client:
        run = client.submit(client.job().code("print('traced')").build(),
                            correlation_id="trace-me")
        result = run.wait(timeout=60)
    assert (result.status, result.stdout) == ("completed", "traced\n")
    produced = by_name([json.loads(s.to_json(indent=None)) for s in exporter.get_finished_spans()])
    submit = produced["sandrun.submit"]
    assert submit["parent_id"] is None
    assert submit["attributes"]["sandrun.correlation_id"] == "trace-me"
    trace_id = submit["context"]["trace_id"]
    publish = produced["apply_async/sandrun.run_job"]
    assert produced["sandrun.on_publish"]["parent_id"] == submit["context"]["span_id"]
    assert publish["parent_id"] == submit["context"]["span_id"]
    assert {s["context"]["trace_id"] for s in produced.values()} == {trace_id}

    ran = by_name(worker_spans(span_file, trace_id))
    assert ran[RUN_SPAN]["parent_id"] == publish["context"]["span_id"]
    run_id = ran[RUN_SPAN]["context"]["span_id"]
    for chain in ("sandrun.on_execute", "sandrun.sandbox", "sandrun.on_result"):
        assert ran[chain]["parent_id"] == run_id, chain
        assert ran[chain]["attributes"]["sandrun.job_id"] == run.id
    assert ran["sandrun.sandbox"]["attributes"]["sandrun.correlation_id"] == "trace-me"
    assert ran["sandrun.sandbox"]["attributes"]["sandrun.tenant"] == "k1"
    assert ran[RUN_SPAN]["resource"]["attributes"]["service.name"] == "sandrun-worker"
    assert ran[RUN_SPAN]["status"]["status_code"] == "UNSET"


def test_a_failing_job_is_in_its_trace_with_the_on_error_chain(
        broker: RedisServer, worker: Worker, span_file: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plugins = [auth_plugin(HMACProvider("k1", KEY), auto_refresh=False),
               opentelemetry_plugin(tracer_provider=provider)]
    with Sandrun.create(broker_url=broker_url(broker), plugins=plugins) as client:
        result = client.job().code("raise SystemExit(4)").submit().wait(timeout=60)
    assert (result.status, result.exit_code) == ("failed", 4)
    [submit] = [s for s in exporter.get_finished_spans() if s.name == "sandrun.submit"]
    trace_id = f"0x{submit.context.trace_id:032x}"
    ran = by_name(worker_spans(span_file, trace_id))
    assert ran["sandrun.on_error"]["parent_id"] == ran[RUN_SPAN]["context"]["span_id"]
