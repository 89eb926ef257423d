"""The ``opentelemetry`` plugin: W3C trace context from ``submit`` to the stored result.

Install the extra (``pip install 'sandrun[otel]'``) and load the plugin in producers
and workers. It wraps the maintained ``opentelemetry-instrumentation-celery`` rather
than re-implementing it: that instrumentation puts a ``traceparent`` header on every
message a producer publishes (a span ``apply_async/<task>``) and, on the worker,
continues the trace in a span ``run/<task>`` that lasts until the result is stored.
Through the host's tracing seam (:mod:`worker.tracing`) this plugin adds the spans
only Sandrun knows about: ``sandrun.submit`` around a submission (the root, unless
the caller has a span of its own), one ``sandrun.<hook>`` span per hook chain that
has handlers (``on_submit``, ``on_publish``, ``on_execute``, ``on_result``,
``on_error``, ...) and ``sandrun.sandbox`` around the sandboxed run of a job.

Where spans go is the process's OpenTelemetry set-up. ``exporter`` (default
``none``) keeps whatever tracer provider the process has (``opentelemetry-instrument``,
or the application's own SDK set-up; with none, nothing is recorded, but a trace the
caller is in still propagates). ``console`` (the SDK's console exporter on stderr),
``otlp`` (needs ``opentelemetry-exporter-otlp``; configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables) or ``"module:callable"`` (a factory returning a
SpanExporter) make the plugin build a tracer provider for the process
(``service_name``, ``span_processor`` batch or simple) and set it as the global one
if none was set. In code, ``opentelemetry_plugin(tracer_provider=provider)`` uses
that provider for this plugin's spans and the Celery instrumentation.

``traceparent`` is not covered by the ``auth`` plugin's signature (the instrumentation
adds it after signing): a broker writer can move a job to another trace, which gives
it no authority over the job. Span attributes are ids and names, never a job's code,
env values or output.
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field

from worker import BasePlugin, ConfigurationError, PluginContext, PluginManifest

if TYPE_CHECKING:  # the SDK and the instrumentation (which imports Celery) load in on_init
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACER_NAME = "sandrun"


class OpenTelemetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service_name: str = Field(default="sandrun", min_length=1)
    exporter: str = Field(default="none", description=(
        "none (the process's own tracer provider), console, otlp, or 'module:callable' "
        "returning a SpanExporter"))
    span_processor: Literal["batch", "simple"] = "batch"


class _Spans:
    """The host's :class:`~worker.tracing.Tracer` on an OpenTelemetry tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def span(self, name: str, attributes: Any) -> AbstractContextManager[Any]:
        return self.tracer.start_as_current_span(name, attributes=dict(attributes))


def _exporter(name: str) -> SpanExporter:
    """The SpanExporter ``exporter`` names."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            module = importlib.import_module(
                "opentelemetry.exporter.otlp.proto.http.trace_exporter")
        except ImportError as exc:
            raise ConfigurationError("the opentelemetry plugin's exporter 'otlp' needs the "
                                     "package opentelemetry-exporter-otlp; install it, or "
                                     "choose another exporter") from exc
        made: SpanExporter = module.OTLPSpanExporter()
        return made
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ConfigurationError(f"the opentelemetry plugin's exporter {name!r} is not none, "
                                 "console, otlp or 'module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"the opentelemetry plugin's exporter {name!r} cannot be "
                                 f"imported ({exc}); check the module path") from exc
    exporter = factory()
    if not isinstance(exporter, SpanExporter):
        raise ConfigurationError(f"the opentelemetry plugin's exporter {name!r} returned a "
                                 f"{type(exporter).__name__}, not a SpanExporter")
    return exporter


class _Process:
    """The tracer provider this plugin built for the process (a forked pool process
    inherits it, and the SDK's processors restart their threads after a fork)."""

    provider: TracerProvider | None = None


def _process_provider(options: OpenTelemetryConfig) -> TracerProvider | None:
    """The provider ``exporter`` asks for, built once per process; None for ``none``."""
    if options.exporter == "none":
        return None
    if _Process.provider is None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name":
                                                            options.service_name}))
        exporter = _exporter(options.exporter)
        provider.add_span_processor(SimpleSpanProcessor(exporter)
                                    if options.span_processor == "simple"
                                    else BatchSpanProcessor(exporter))
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        _Process.provider = provider
    return _Process.provider


def _instrumentor() -> CeleryInstrumentor:
    """The Celery instrumentation (one per process: its class is a singleton), imported
    here so that listing plugins does not import Celery."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    return CeleryInstrumentor()  # type: ignore[no-untyped-call]


class OpenTelemetryPlugin(BasePlugin):
    """Traces jobs from submit to stored result with OpenTelemetry."""

    name = "opentelemetry"
    version = "1.0.0"
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="W3C trace context from submit to the stored result (OpenTelemetry)",
        keywords=["opentelemetry", "tracing", "traceparent"], configuration=OpenTelemetryConfig,
        apis=[], permissions=["network"])  # exports spans; it changes and stops nothing

    def __init__(self, options: OpenTelemetryConfig | None = None, *,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self._options = options
        self._given = tracer_provider
        self.provider: trace.TracerProvider | None = None
        self._instrumented = False

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or OpenTelemetryConfig()
        self.provider = self._given or _process_provider(self.options)
        instrumentor = _instrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=self.provider)
            self._instrumented = True
        tracer = trace.get_tracer(TRACER_NAME, self.version, tracer_provider=self.provider)
        if context.install_tracer is not None:
            context.install_tracer(_Spans(tracer))

    def on_destroy(self) -> None:
        if self._instrumented:
            _instrumentor().uninstrument()
            self._instrumented = False
        flush = getattr(self.provider or trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush()


def opentelemetry_plugin(tracer_provider: trace.TracerProvider | None = None,
                         **options: Any) -> OpenTelemetryPlugin:
    """``opentelemetry_plugin(tracer_provider=provider)`` or ``opentelemetry_plugin(
    exporter="console", service_name="producer")``."""
    return OpenTelemetryPlugin(OpenTelemetryConfig(**options) if options else None,
                               tracer_provider=tracer_provider)
