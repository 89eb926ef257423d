"""The collector plugins get follows the one installed, whatever the load order."""

from __future__ import annotations

from typing import Any

from worker import BasePlugin, PluginContext, PluginManager
from worker.collector import InMemoryMetrics, SwitchedMetrics


class Early(BasePlugin):
    """Keeps a counter made in ``on_init``, before any collector is installed."""

    name = "early"
    version = "1.0.0"

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        assert self.metrics is not None
        self.kept = self.metrics.counter("sandrun_early_kept_total", "", ("kind",))


class Installer(BasePlugin):
    """Installs its own collector in ``on_init``, as the metrics plugin does."""

    name = "installer"
    version = "1.0.0"

    def __init__(self, collector: InMemoryMetrics) -> None:
        self.collector = collector

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        assert context.install_metrics is not None
        context.install_metrics(self.collector)


def record(plugin: Any) -> None:
    plugin.kept.labels(kind="kept").inc()
    plugin.metrics.counter("sandrun_early_late_total").inc(2)
    plugin.metrics.histogram("sandrun_early_seconds", "", ("hook",)).labels(hook="x").observe(0.5)
    plugin.metrics.gauge("sandrun_early_running").set(3)


def check(installed: InMemoryMetrics, before: InMemoryMetrics) -> None:
    assert installed.value("sandrun_early_kept_total", kind="kept") == 1
    assert installed.value("sandrun_early_late_total") == 2
    assert installed.observations("sandrun_early_seconds", hook="x") == [0.5]
    assert installed.value("sandrun_early_running") == 3
    assert before.value("sandrun_early_late_total") == 0


def test_a_plugin_loaded_before_the_installer_records_into_the_installed_collector() -> None:
    before, installed = InMemoryMetrics(), InMemoryMetrics()
    manager = PluginManager(metrics=before)
    early = manager.load(Early)
    manager.load(Installer(installed))
    record(early)
    check(installed, before)


def test_a_plugin_loaded_after_the_installer_records_there_too() -> None:
    before, installed = InMemoryMetrics(), InMemoryMetrics()
    manager = PluginManager(metrics=before)
    manager.load_all([Installer(installed), Early])
    record(manager.get("early"))
    check(installed, before)


def test_host_metrics_follow_the_switch_and_in_memory_readers_still_work() -> None:
    switched = SwitchedMetrics(InMemoryMetrics())
    switched.counter("sandrun_a_total").inc()
    assert switched.value("sandrun_a_total") == 1  # InMemoryMetrics.value, forwarded
    other = InMemoryMetrics()
    switched.switch(SwitchedMetrics(other))  # a switch of a switch: the collector inside
    switched.counter("sandrun_a_total").inc()
    assert other.value("sandrun_a_total") == 1 and switched.target is other
