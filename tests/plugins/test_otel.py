"""The opentelemetry plugin called directly: spans per hook chain through the host's
tracing seam, the Celery instrumentation switched on and off, exporter choices."""

from __future__ import annotations

import pytest
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from plugins.otel import OpenTelemetryConfig, _exporter, opentelemetry_plugin
from worker import (
    ConfigurationError,
    Job,
    JobResult,
    Plugin,
    PluginManager,
    ResultContext,
    SubmissionContext,
    SubmissionRejected,
)
from worker.tracing import NO_SPAN


class Veto(Plugin):
    name = "veto"

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        if job.labels.get("veto"):
            raise SubmissionRejected("vetoed")


def traced() -> tuple[PluginManager, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    manager = PluginManager()
    manager.load_all([opentelemetry_plugin(tracer_provider=provider), Veto()])
    return manager, exporter


def test_a_span_per_hook_chain_with_handlers_nested_in_the_host_span() -> None:
    manager, exporter = traced()
    job = Job(code="1")
    with manager.span("sandrun.submit", {"sandrun.job_id": job.id}):
        manager.on_submit(job, SubmissionContext(job_id=job.id))
        manager.on_result(JobResult(id=job.id, status="completed"),  # no handlers: no span
                          ResultContext(node_id="n", task_id=job.id))
    chain, outer = exporter.get_finished_spans()
    assert (chain.name, outer.name) == ("sandrun.on_submit", "sandrun.submit")
    assert chain.parent is not None and chain.parent.span_id == outer.context.span_id
    assert dict(chain.attributes or {}) == {"sandrun.hook": "on_submit", "sandrun.job_id": job.id}
    manager.close()


def test_a_vetoing_chain_is_a_failed_span() -> None:
    manager, exporter = traced()
    with pytest.raises(SubmissionRejected):
        manager.on_submit(Job(code="1", labels={"veto": "1"}), SubmissionContext())
    [span] = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert [event.name for event in span.events] == ["exception"]
    manager.close()


def test_the_celery_instrumentation_lasts_as_long_as_the_plugin() -> None:
    assert not CeleryInstrumentor().is_instrumented_by_opentelemetry
    manager, _ = traced()
    assert CeleryInstrumentor().is_instrumented_by_opentelemetry
    second, _ = traced()  # another client in the process: one instrumentation
    second.close()
    assert CeleryInstrumentor().is_instrumented_by_opentelemetry
    manager.close()
    assert not CeleryInstrumentor().is_instrumented_by_opentelemetry


def test_without_the_plugin_the_host_span_is_a_shared_no_op() -> None:
    manager = PluginManager()
    assert manager.tracer is None and manager.span("sandrun.submit", {}) is NO_SPAN


def spans_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def not_an_exporter() -> str:
    return "spans?"


def test_exporter_choices_and_their_errors() -> None:
    assert isinstance(_exporter("console"), ConsoleSpanExporter)
    assert isinstance(_exporter("tests.plugins.test_otel:spans_exporter"), InMemorySpanExporter)
    with pytest.raises(ConfigurationError, match="not none, console, otlp"):
        _exporter("jaeger")
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        _exporter("tests.nowhere:exporter")
    with pytest.raises(ConfigurationError, match="not a SpanExporter"):
        _exporter("tests.plugins.test_otel:not_an_exporter")
    with pytest.raises(ValueError, match="span_processor"):
        OpenTelemetryConfig.model_validate({"span_processor": "sometimes"})
