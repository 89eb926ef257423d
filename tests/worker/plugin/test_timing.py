"""Hook timing (``time_hooks``): both dispatch flavours report every handler's duration,
faults and control flow included; switching it on or off applies to loaded plugins."""

from __future__ import annotations

import asyncio

import pytest

from worker import Job, Plugin, PluginManager, SubmissionContext, SubmissionRejected, hook
from worker.plugin.dispatch import HookRegistry, implementations
from worker.plugin.impl import HookImpl
from worker.plugin.validation import check_plugin

CTX = SubmissionContext(producer="test")
PAUSE = 0.02


class Records:
    """A hook timer that keeps ``(plugin, seconds)`` per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, impl: HookImpl, seconds: float) -> None:
        self.calls.append((impl.plugin, seconds))

    def plugins(self) -> list[str]:
        return [plugin for plugin, _ in self.calls]


class Quick(Plugin):
    name = "quick"
    priority = 10

    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        return job.replace(args=[*job.args, "quick"])


class Pausing(Plugin):
    name = "pausing"

    async def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        await asyncio.sleep(PAUSE)
        return job.replace(args=[*job.args, "pausing"])


class Failing(Plugin):
    name = "failing"
    priority = -10

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        raise RuntimeError("boom")


class Limited(Plugin):
    name = "limited"
    priority = -20
    hook_timeout = 5

    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        return job.replace(args=[*job.args, "limited"])


def timed_manager() -> tuple[PluginManager, Records]:
    records = Records()
    manager = PluginManager()
    manager.load_all([Quick(), Pausing(), Failing(), Limited()])
    manager.time_hooks(records)
    return manager, records


def test_sync_dispatch_times_every_handler_including_an_async_one_driven_to_its_end() -> None:
    manager, records = timed_manager()
    job = manager.on_submit(Job(code="1"), CTX)
    assert job.args == ["quick", "pausing", "limited"]
    assert records.plugins() == ["quick", "pausing", "failing", "limited"]
    assert dict(records.calls)["pausing"] >= PAUSE
    assert manager.hook_errors == {("failing", "on_submit"): 1}


def test_async_dispatch_times_every_handler_including_the_await() -> None:
    manager, records = timed_manager()
    job = asyncio.run(manager.aexecute_hook("on_submit", Job(code="1"), CTX))
    assert job.args == ["quick", "pausing", "limited"]
    assert records.plugins() == ["quick", "pausing", "failing", "limited"]
    assert dict(records.calls)["pausing"] >= PAUSE


def test_timing_switched_on_after_loading_and_off_again() -> None:
    records = Records()
    manager = PluginManager()
    manager.load(Quick)
    manager.on_submit(Job(code="1"), CTX)
    manager.time_hooks(records)
    manager.on_submit(Job(code="1"), CTX)
    manager.load(Failing)  # loaded while timing is on: timed too
    manager.on_submit(Job(code="1"), CTX)
    manager.time_hooks(None)
    assert manager.on_submit(Job(code="1"), CTX).args == ["quick"]
    assert records.plugins() == ["quick", "quick", "failing"]


def test_a_veto_is_timed_and_still_reaches_the_caller() -> None:
    class Veto(Plugin):
        name = "veto"
        priority = 100

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise SubmissionRejected("no")

    records = Records()
    manager = PluginManager()
    manager.load_all([Veto(), Quick()])
    manager.time_hooks(records)
    with pytest.raises(SubmissionRejected):
        manager.on_submit(Job(code="1"), CTX)
    with pytest.raises(SubmissionRejected):
        asyncio.run(manager.aexecute_hook("on_submit", Job(code="1"), CTX))
    assert records.plugins() == ["veto", "veto"]
    assert manager.hook_errors == {}


def test_a_timed_once_handler_is_timed_once() -> None:
    class Once(Plugin):
        name = "once"

        @hook(once=True)
        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            return None

    records = Records()
    manager = PluginManager()
    manager.load(Once)
    manager.time_hooks(records)
    manager.on_submit(Job(code="1"), CTX)
    manager.on_submit(Job(code="1"), CTX)
    assert records.plugins() == ["once"]
    assert manager.hook_plan() == {}


def test_untimed_handlers_are_called_as_they_are() -> None:
    """No timeout, no timer, not once: both flavours call the bound method itself, so
    the untimed path pays for no wrapper and no timer check."""
    plugin = Quick()
    registry = HookRegistry()
    registry.add(implementations(check_plugin(plugin), order=0, default_timeout=0))
    for steps in (registry.steps["on_submit"], registry.async_steps["on_submit"]):
        assert [call for _, call in steps] == [plugin.on_submit]
    registry.set_timer(Records())
    assert registry.steps["on_submit"][0][1] != plugin.on_submit
