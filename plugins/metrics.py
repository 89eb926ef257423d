"""The ``metrics`` plugin: Prometheus metrics for jobs, hooks and dead letters, per worker.

Names carry the ``prefix`` (``sandrun_``): ``jobs_submitted_total{gpu_type,
consensus_level}`` and ``job_submission_duration_seconds`` (producer: time from
the submission's start to this plugin's ``on_submit``, which runs after the
other plugins'), ``jobs_completed_total{status,gpu_type}``,
``job_execution_duration_seconds{gpu_type,status}`` (buckets 1 ... 3600),
``job_cost{currency}``, ``errors_total{error_type,operation}``,
``jobs_in_progress``, ``job_retries_total``, ``job_queue_wait_seconds``, and,
through the collector it installs for the host, ``dead_letter_total{source}``,
``plugin_hook_duration_seconds{plugin,hook}`` and
``plugin_hook_errors_total{plugin,hook,kind}`` (kind ``error``: raised,
``timeout``: abandoned past its hook timeout, ``permission``: refused, a change, veto,
storage or network use the plugin was not granted). Labels never hold job ids, users or
code. ``enabled_metrics`` globs select metrics; ``labels`` are added to all.

Per worker, one endpoint: ``on_worker_start`` (main process, before the pool
forks) wipes a private multiprocess directory, switches prometheus-client to
multiprocess mode and serves ``/metrics`` from the main process, summing every
pool process. A pool process marks itself dead when it exits; the files of one
killed with SIGKILL are swept at the next scrape, so ``jobs_in_progress``
returns to 0. A port in use stops the worker, unless ``port_auto_increment``
allows trying the next ports.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, multiprocess, values
from pydantic import BaseModel, ConfigDict, Field

from worker import (
    BasePlugin,
    ErrorContext,
    Execution,
    ExecutionContext,
    HookImpl,
    Job,
    JobResult,
    PluginContext,
    PluginManifest,
    ResultContext,
    StartupRefused,
    SubmissionContext,
    WorkerContext,
    WorkerInfo,
    hook,
    load_settings,
)

BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 900, 3600)
KINDS = {"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge,
         "histogram": prometheus_client.Histogram}


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: str = Field(default="sandrun_", pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    labels: dict[str, str] = Field(default_factory=dict, description="constant labels")
    enabled_metrics: list[str] = Field(default_factory=lambda: ["*"])
    port: int = Field(default=9808, ge=0, le=65535, description="0: do not serve")
    address: str = "0.0.0.0"
    port_auto_increment: int = Field(default=0, ge=0, description="next ports to try")
    multiproc_dir: str | None = None


class _Off:
    """A disabled metric: accepts every call, records nothing."""

    def labels(self, **_: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...
    def set(self, value: float) -> None: ...
    def observe(self, amount: float) -> None: ...


class _Bound:
    """A metric with the constant labels filled in."""

    def __init__(self, metric: Any, const: dict[str, str], labelled: bool) -> None:
        self._metric, self._const, self._labelled = metric, const, labelled

    def labels(self, **labels: str) -> Any:
        return self._metric.labels(**self._const, **labels)

    def _plain(self) -> Any:
        return self._metric.labels(**self._const) if self._labelled else self._metric

    def inc(self, amount: float = 1) -> None:
        self._plain().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._plain().dec(amount)

    def set(self, value: float) -> None:
        self._plain().set(value)

    def observe(self, amount: float) -> None:
        self._plain().observe(amount)


class PrometheusCollector:
    """The host's MetricsCollector on prometheus-client; metrics are made per process
    (a forked pool process makes its own, in multiprocess mode)."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self._made: dict[str, Any] = {}
        self.registry = CollectorRegistry()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """In a forked child: metrics must be made again (in multiprocess mode)."""
        self._made, self.registry = {}, CollectorRegistry()

    def enabled(self, name: str) -> bool:
        short = name.removeprefix(self.config.prefix).removeprefix("sandrun_")
        return any(fnmatch.fnmatchcase(short, p) for p in self.config.enabled_metrics)

    def _make(self, kind: str, name: str, doc: str, labelnames: Sequence[str],
              **extra: Any) -> Any:
        made = self._made.get(name)
        if made is None:
            if not self.enabled(name):
                made = _Off()
            else:
                names = [*self.config.labels, *labelnames]
                metric = KINDS[kind](name, doc or name, names, registry=self.registry, **extra)
                made = _Bound(metric, self.config.labels, bool(names))
            self._made[name] = made
        return made

    def counter(self, name: str, documentation: str = "", labelnames: Sequence[str] = ()) -> Any:
        return self._make("counter", name, documentation, labelnames)

    def gauge(self, name: str, documentation: str = "", labelnames: Sequence[str] = ()) -> Any:
        return self._make("gauge", name, documentation, labelnames, multiprocess_mode="livesum")

    def histogram(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                  buckets: Sequence[float] | None = None) -> Any:
        extra = {"buckets": tuple(buckets)} if buckets else {}
        return self._make("histogram", name, documentation, labelnames, **extra)


class _SweepingCollector:
    """Sums the multiprocess files, after forgetting the live gauges of dead processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inner = multiprocess.MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Any]:
        for file in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            pid = int(re.findall(r"_(\d+)\.db$", file)[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        yield from self.inner.collect()  # type: ignore[no-untyped-call]


class MetricsPlugin(BasePlugin):
    """Counts jobs, durations, costs, errors and hook latency into Prometheus."""

    name = "metrics"
    version = "1.0.0"
    hook_timeout = 0  # bounded hooks: run inline, no timeout thread (see worker.plugin.dispatch)
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="Prometheus metrics for jobs and plugins, one endpoint per worker",
        keywords=["prometheus", "metrics"], configuration=MetricsConfig,
        apis=["on_submit", "on_execute", "on_result", "on_error", "on_worker_start",
              "on_worker_stop"],
        permissions=["network"])  # it serves /metrics; it changes and stops nothing

    def __init__(self, options: MetricsConfig | None = None) -> None:
        self._options = options
        self.server: Any = None
        self._running: set[str] = set()

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or MetricsConfig()
        self.collector = PrometheusCollector(self.options)
        self._hook_timers: dict[tuple[str, str], Any] = {}
        os.register_at_fork(after_in_child=self._hook_timers.clear)
        if context.install_metrics is not None:
            context.install_metrics(self.collector)
        if context.time_hooks is not None:
            context.time_hooks(self._time_hook)

    def _name(self, short: str) -> str:
        return self.options.prefix + short

    def _time_hook(self, impl: HookImpl, seconds: float) -> None:
        child = self._hook_timers.get((impl.plugin, impl.hook))
        if child is None:
            child = self.collector.histogram(
                self._name("plugin_hook_duration_seconds"), "Hook latency",
                ("plugin", "hook")).labels(plugin=impl.plugin, hook=impl.hook)
            self._hook_timers[(impl.plugin, impl.hook)] = child
        child.observe(seconds)

    @hook(priority=-500)
    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        labels = {"gpu_type": (job.gpu.type if job.gpu else None) or "none",
                  "consensus_level": job.consensus}
        self.collector.counter(self._name("jobs_submitted_total"), "Jobs submitted",
                               tuple(labels)).labels(**labels).inc()
        elapsed = (time.time() - context.submitted_at.timestamp())
        self.collector.histogram(self._name("job_submission_duration_seconds"),
                                 "Producer-side submission time").observe(max(0.0, elapsed))

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        self._running.add(context.task_id)
        self.collector.gauge(self._name("jobs_in_progress"), "Jobs running now").inc()
        if context.attempt > 1:
            self.collector.counter(self._name("job_retries_total"), "Retried attempts").inc()
        elif context.submitted_at is not None and context.deliveries == 1:
            wait = context.started_at.timestamp() - context.submitted_at.timestamp()
            self.collector.histogram(self._name("job_queue_wait_seconds"), "Publish to start",
                                     (), WAIT_BUCKETS).observe(max(0.0, wait))

    def _done(self, task_id: str | None) -> None:
        if task_id in self._running:
            self._running.discard(task_id)
            self.collector.gauge(self._name("jobs_in_progress"), "Jobs running now").dec()

    @hook(priority=-500)
    def on_result(self, result: JobResult, context: ResultContext) -> None:
        self._done(context.task_id)
        gpu = (result.execution.gpu_type if result.execution else None) or "none"
        self.collector.counter(self._name("jobs_completed_total"), "Jobs finished",
                               ("status", "gpu_type")).labels(status=result.status,
                                                              gpu_type=gpu).inc()
        if result.execution_time is not None:
            self.collector.histogram(self._name("job_execution_duration_seconds"), "Run time",
                                     ("gpu_type", "status"), BUCKETS).labels(
                gpu_type=gpu, status=result.status).observe(result.execution_time)
        if result.cost is not None:
            self.collector.histogram(self._name("job_cost"), "Cost per job", ("currency",)
                                     ).labels(currency=result.cost.currency).observe(
                float(result.cost.amount))

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        if context.operation == "execute":
            self._done(context.task_id)
        self.collector.counter(self._name("errors_total"), "Failures",
                               ("error_type", "operation")).labels(
            error_type=type(error).__name__, operation=context.operation).inc()

    @hook(priority=1000)
    def on_worker_start(self, worker: WorkerInfo, context: WorkerContext) -> WorkerInfo | None:
        path = Path(self.options.multiproc_dir or load_settings().state_dir / "metrics" /
                    re.sub(r"[^\w.@-]", "_", worker.hostname))
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        if not self.options.port:
            return None
        registry = CollectorRegistry()
        registry.register(_SweepingCollector(str(path)))
        port = self._serve(registry)
        host = socket.gethostname() if self.options.address in ("0.0.0.0", "::") \
            else self.options.address
        url = f"http://{host}:{port}/metrics"
        self.logger.info("metrics_serving", url=url, multiproc_dir=str(path))
        return worker.replace(extra={**worker.extra, "metrics_url": url})

    def _serve(self, registry: CollectorRegistry) -> int:
        first = self.options.port
        for port in range(first, first + self.options.port_auto_increment + 1):
            try:
                self.server, _ = prometheus_client.start_http_server(
                    port, addr=self.options.address, registry=registry)
            except OSError:
                continue
            return port
        raise StartupRefused(
            f"metrics port {first} on {self.options.address} is in use"
            + (f" (and the next {self.options.port_auto_increment})"
               if self.options.port_auto_increment else "")
            + "; configure another port, or port_auto_increment to try the next ports")

    def on_worker_stop(self, worker: WorkerInfo, context: WorkerContext) -> None:
        if self.server is not None:
            self.server.shutdown()

    def on_destroy(self) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def metrics_plugin(**options: Any) -> MetricsPlugin:
    """``metrics_plugin(port=9808, labels={"region": "eu"}, enabled_metrics=["jobs_*"])``."""
    return MetricsPlugin(MetricsConfig(**options) if options else None)
