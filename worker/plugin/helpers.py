"""Conveniences for plugin authors: :class:`BasePlugin` and two method decorators.

``BasePlugin.on_init`` keeps the context's logger (bound with the plugin name),
metrics, config and storage on the instance, so hooks can write
``self.logger.info("job_tagged", job_id=job.id)``. Override ``on_init`` and call
``super().on_init(context)`` first.

``@with_metrics("scheduled")`` times a method into
``sandrun_<plugin>_scheduled_duration_seconds`` and counts calls in
``sandrun_<plugin>_scheduled_total{status="success"|"error"}``;
``@with_logging("job_scheduling")`` logs a debug event before each call. Both
work on plain and ``async`` methods and keep :func:`~worker.plugin.spec.hook` options.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import structlog
from structlog.typing import FilteringBoundLogger

from worker.collector import Counter, MetricsCollector
from worker.plugin.context import PluginContext
from worker.plugin.spec import Plugin
from worker.stores.storage import PluginStorage

F = TypeVar("F", bound=Callable[..., Any])


def metric_name(plugin: str, name: str) -> str:
    """A Prometheus-safe metric name ``sandrun_<plugin>_<name>``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"sandrun_{plugin}_{name}")


class BasePlugin(Plugin):
    """A Plugin that keeps its context's tools at hand after ``on_init``."""

    config: Any = None
    metrics: MetricsCollector | None = None
    storage: PluginStorage | None = None
    _logger: FilteringBoundLogger | None = None

    def on_init(self, context: PluginContext) -> None:
        self._logger = context.logger
        self.metrics = context.metrics
        self.config = context.config
        self.storage = context.storage

    @property
    def logger(self) -> FilteringBoundLogger:
        """The context's logger, or a logger bound with the plugin name before ``on_init``."""
        if self._logger is None:
            self._logger = structlog.get_logger("sandrun.plugin", plugin=self.name)
        return self._logger

    def log(self, level: str, event: str, **data: Any) -> None:
        """Log ``event`` (a snake_case name) at ``level`` with key/value ``data``."""
        getattr(self.logger, level)(event, **data)

    def metric(self, name: str, documentation: str = "") -> Counter | None:
        """A counter ``sandrun_<plugin>_<name>``, or None before ``on_init``."""
        if self.metrics is None:
            return None
        return self.metrics.counter(metric_name(self.name, name), documentation)


def _record(owner: Any, name: str, started: float, status: str) -> None:
    metrics: MetricsCollector | None = getattr(owner, "metrics", None)
    if metrics is None:
        return
    plugin = getattr(owner, "name", "plugin")
    metrics.histogram(metric_name(plugin, f"{name}_duration_seconds")).observe(
        time.perf_counter() - started)
    metrics.counter(metric_name(plugin, f"{name}_total"), labelnames=("status",)).labels(
        status=status).inc()


def with_metrics(name: str) -> Callable[[F], F]:
    """Time and count every call of the decorated method (sync or async)."""

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    result = await fn(self, *args, **kwargs)
                except Exception:
                    _record(self, name, started, "error")
                    raise
                _record(self, name, started, "success")
                return result

            return cast(F, awrapper)

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = fn(self, *args, **kwargs)
            except Exception:
                _record(self, name, started, "error")
                raise
            _record(self, name, started, "success")
            return result

        return cast(F, wrapper)

    return decorate


def with_logging(event: str | None = None) -> Callable[[F], F]:
    """Log a debug ``event`` (default ``<method>_called``) before each call."""

    def decorate(fn: F) -> F:
        name = event or f"{fn.__name__}_called"

        def emit(self: Any, args: tuple[Any, ...]) -> None:
            logger = getattr(self, "logger", None)
            if logger is not None:
                logger.debug(name, plugin=getattr(self, "name", None), method=fn.__name__,
                             args=len(args))

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                emit(self, args)
                return await fn(self, *args, **kwargs)

            return cast(F, awrapper)

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            emit(self, args)
            return fn(self, *args, **kwargs)

        return cast(F, wrapper)

    return decorate
