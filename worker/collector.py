"""The metrics interface plugins see as ``context.metrics``.

The host never imports ``prometheus_client``: it talks to a
:class:`MetricsCollector`, shaped like prometheus-client's own objects
(``collector.counter(name, ...).labels(status="ok").inc()``). Until the metrics
plugin installs a Prometheus-backed collector, :class:`InMemoryMetrics` records
every value in the process, which is also what tests read.

Plugins get a :class:`SwitchedMetrics`, not the collector itself: a plugin loaded
before the metrics plugin (``auth`` before ``metrics`` in ``SANDRUN_PLUGINS``) keeps
the object it was given in ``on_init``, and every metric it makes, or made and kept,
records into whichever collector is installed when it records.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, Self

LabelKey = tuple[tuple[str, str], ...]


class Counter(Protocol):
    """A monotonically increasing value."""

    def labels(self, **labels: str) -> Self: ...
    def inc(self, amount: float = 1) -> None: ...


class Gauge(Protocol):
    """A value that goes up and down."""

    def labels(self, **labels: str) -> Self: ...
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...
    def set(self, value: float) -> None: ...


class Histogram(Protocol):
    """A distribution of observed values."""

    def labels(self, **labels: str) -> Self: ...
    def observe(self, amount: float) -> None: ...


class MetricsCollector(Protocol):
    """Creates (or returns the existing) metric of a name; idempotent per name."""

    def counter(self, name: str, documentation: str = "",
                labelnames: Sequence[str] = ()) -> Counter: ...
    def gauge(self, name: str, documentation: str = "",
              labelnames: Sequence[str] = ()) -> Gauge: ...
    def histogram(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                  buckets: Sequence[float] | None = None) -> Histogram: ...


class _Metric:
    """One in-memory metric; ``labels`` returns a child bound to label values."""

    def __init__(self, store: InMemoryMetrics, name: str, labels: LabelKey = ()) -> None:
        self._store, self._name, self._labels = store, name, labels

    def labels(self, **labels: str) -> Self:
        merged = dict(self._labels) | {k: str(v) for k, v in labels.items()}
        return type(self)(self._store, self._name, tuple(sorted(merged.items())))

    def inc(self, amount: float = 1) -> None:
        self._store.add(self._name, self._labels, amount)

    def dec(self, amount: float = 1) -> None:
        self._store.add(self._name, self._labels, -amount)

    def set(self, value: float) -> None:
        self._store.put(self._name, self._labels, value)

    def observe(self, amount: float) -> None:
        self._store.record(self._name, self._labels, amount)


class InMemoryMetrics:
    """A thread-safe :class:`MetricsCollector` that keeps every value in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, LabelKey], float] = {}
        self._observations: dict[tuple[str, LabelKey], list[float]] = {}

    def counter(self, name: str, documentation: str = "",
                labelnames: Sequence[str] = ()) -> Counter:
        return _Metric(self, name)

    def gauge(self, name: str, documentation: str = "", labelnames: Sequence[str] = ()) -> Gauge:
        return _Metric(self, name)

    def histogram(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                  buckets: Sequence[float] | None = None) -> Histogram:
        return _Metric(self, name)

    def add(self, name: str, labels: LabelKey, amount: float) -> None:
        """Add ``amount`` to a counter or gauge sample."""
        with self._lock:
            key = (name, labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def put(self, name: str, labels: LabelKey, value: float) -> None:
        """Set a gauge sample."""
        with self._lock:
            self._values[(name, labels)] = value

    def record(self, name: str, labels: LabelKey, amount: float) -> None:
        """Record one histogram observation."""
        with self._lock:
            self._observations.setdefault((name, labels), []).append(amount)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge sample (0 when never touched)."""
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def observations(self, name: str, **labels: str) -> list[float]:
        """Every value a histogram sample observed, oldest first."""
        with self._lock:
            return list(self._observations.get((name, tuple(sorted(labels.items()))), []))


class _Late:
    """A metric of a :class:`SwitchedMetrics`: found in the installed collector (which
    caches it by name) each time it records, with the labels given so far."""

    __slots__ = ("_args", "_kind", "_labels", "_switch")

    def __init__(self, switch: SwitchedMetrics, kind: str, args: tuple[Any, ...],
                 labels: dict[str, str]) -> None:
        self._switch, self._kind, self._args, self._labels = switch, kind, args, labels

    def labels(self, **labels: str) -> Self:
        return type(self)(self._switch, self._kind, self._args, {**self._labels, **labels})

    def _target(self) -> Any:
        metric = getattr(self._switch.target, self._kind)(*self._args)
        return metric.labels(**self._labels) if self._labels else metric

    def inc(self, amount: float = 1) -> None:
        self._target().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._target().dec(amount)

    def set(self, value: float) -> None:
        self._target().set(value)

    def observe(self, amount: float) -> None:
        self._target().observe(amount)


class SwitchedMetrics:
    """The :class:`MetricsCollector` a plugin manager hands to plugins: it forwards to
    ``target``, which :meth:`switch` replaces (the metrics plugin installing its
    Prometheus collector). Other attributes (``value``, ``observations`` of an
    :class:`InMemoryMetrics`) are the target's."""

    def __init__(self, target: MetricsCollector) -> None:
        self.target = target

    def switch(self, target: MetricsCollector) -> None:
        """Record into ``target`` from now on; values recorded before stay where they are."""
        self.target = target.target if isinstance(target, SwitchedMetrics) else target

    def counter(self, name: str, documentation: str = "",
                labelnames: Sequence[str] = ()) -> Counter:
        return _Late(self, "counter", (name, documentation, tuple(labelnames)), {})

    def gauge(self, name: str, documentation: str = "", labelnames: Sequence[str] = ()) -> Gauge:
        return _Late(self, "gauge", (name, documentation, tuple(labelnames)), {})

    def histogram(self, name: str, documentation: str = "", labelnames: Sequence[str] = (),
                  buckets: Sequence[float] | None = None) -> Histogram:
        return _Late(self, "histogram", (name, documentation, tuple(labelnames), buckets), {})

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr == "target":  # copy and pickle probe before __init__
            raise AttributeError(attr)
        return getattr(self.target, attr)
