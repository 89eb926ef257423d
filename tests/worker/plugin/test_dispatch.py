"""Hook timeouts: abandoned calls, counting per plugin/hook/kind, overrides, control flow.

Hanging hooks wait on an Event that each test sets at the end, so no abandoned
thread outlives its test; timeouts are a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker import (
    ExecutionContext,
    Job,
    JobRejected,
    Plugin,
    PluginEvent,
    PluginManager,
    SubmissionContext,
    SubmissionRejected,
    hook,
)
from worker.collector import InMemoryMetrics
from worker.errors import ConfigurationError, HookTimeout, InvalidPlugin
from worker.plugin.hookthreads import MAX_HUNG_CALLS
from worker.settings import Settings

CTX = SubmissionContext(producer="test")
SHORT = 0.05


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test: every hanging hook returns, its thread is freed."""
    event = threading.Event()
    yield event
    event.set()


def hanging(name: str, release: threading.Event, **attrs: Any) -> Plugin:
    """A plugin whose on_submit blocks until ``release`` is set, then replaces the job."""

    class Hang(Plugin):
        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            release.wait(30)
            return job.replace(args=[*job.args, f"{name}-late"])

    Hang.name = name
    for key, value in attrs.items():
        setattr(Hang, key, value)
    return Hang()


class Tag(Plugin):
    name = "tag"
    priority = -10

    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        return job.replace(args=[*job.args, "tag"])


def submit(manager: PluginManager) -> Job:
    result: Job = manager.execute_hook("on_submit", Job(code="1"), CTX)
    return result


def test_sync_hook_past_its_timeout_is_abandoned_and_the_chain_goes_on(
        release: threading.Event) -> None:
    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics, hook_timeout=SHORT)
    events: list[PluginEvent] = []
    manager.on("hook_error", events.append)
    manager.load_all([hanging("hang", release), Tag()])
    started = time.monotonic()
    assert submit(manager).args == ["tag"]  # unchanged by the abandoned call
    assert time.monotonic() - started < 1
    assert manager.hook_timeouts == {("hang", "on_submit"): 1}
    assert manager.hook_errors == {("hang", "on_submit"): 1}
    assert metrics.value("sandrun_plugin_hook_errors_total", plugin="hang", hook="on_submit",
                         kind="timeout") == 1
    assert metrics.value("sandrun_plugin_hook_errors_total", plugin="hang", hook="on_submit",
                         kind="error") == 0
    assert isinstance(events[0].error, HookTimeout) and events[0].error.timeout == SHORT
    assert "did not finish within 0.05s" in str(events[0].error)


def test_async_hook_past_its_timeout_is_cancelled_in_both_dispatch_flavours() -> None:
    cancelled: list[bool] = []

    class Slow(Plugin):
        name = "slow"
        hook_timeout = SHORT

        async def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return job.replace(args=["late"])

    manager = PluginManager()
    manager.load_all([Slow(), Tag()])
    assert submit(manager).args == ["tag"]
    result = asyncio.run(manager.aexecute_hook("on_submit", Job(code="1"), CTX))
    assert result.args == ["tag"]
    assert cancelled == [True, True]
    assert manager.hook_timeouts == {("slow", "on_submit"): 2}


def test_async_hook_raising_its_own_timeout_error_is_an_error_not_a_timeout() -> None:
    class Own(Plugin):
        name = "own"
        hook_timeout = 5

        async def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise TimeoutError("the upstream API timed out")

    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics)
    manager.load(Own)
    submit(manager)
    assert manager.hook_timeouts == {}
    assert metrics.value("sandrun_plugin_hook_errors_total", plugin="own", hook="on_submit",
                         kind="error") == 1


def test_sync_hook_timeout_under_aexecute_hook(release: threading.Event) -> None:
    manager = PluginManager(hook_timeout=SHORT)
    manager.load_all([hanging("hang", release), Tag()])
    result = asyncio.run(manager.aexecute_hook("on_submit", Job(code="1"), CTX))
    assert result.args == ["tag"]
    assert manager.hook_timeouts == {("hang", "on_submit"): 1}


def test_plugin_and_hook_timeouts_override_the_default(release: threading.Event) -> None:
    class Patient(Plugin):
        name = "patient"
        hook_timeout = 5  # its own limit, longer than the manager's

        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            time.sleep(0.15)
            return job.replace(args=[*job.args, "patient"])

    class Inline(Plugin):
        name = "inline"
        hook_timeout = SHORT

        @hook(timeout=0)  # this hook: no limit, runs on the caller's thread
        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            assert threading.current_thread() is threading.main_thread()
            time.sleep(0.15)
            return job.replace(args=[*job.args, "inline"])

    manager = PluginManager(hook_timeout=SHORT)
    manager.load_all([Patient(), Inline(), hanging("hang", release, priority=-5), Tag()])
    assert submit(manager).args == ["patient", "inline", "tag"]
    assert manager.hook_timeouts == {("hang", "on_submit"): 1}
    plan = {e.plugin: e.timeout for e in manager.hook_plan()["on_submit"]}
    assert plan == {"patient": 5, "inline": 0, "hang": SHORT, "tag": SHORT}


def test_a_bare_manager_has_no_timeout_and_runs_hooks_inline() -> None:
    threads: list[threading.Thread] = []

    class Where(Plugin):
        name = "where"

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            threads.append(threading.current_thread())

    manager = PluginManager()
    manager.load(Where)
    submit(manager)
    assert threads == [threading.current_thread()]
    assert manager.hook_plan()["on_submit"][0].timeout == 0


def test_faults_are_counted_per_plugin_hook_and_kind(release: threading.Event) -> None:
    class Faulty(Plugin):
        name = "faulty"

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise RuntimeError("boom")

        def on_execute(self, execution: Any, context: ExecutionContext) -> None:
            release.wait(30)

    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics, hook_timeout=SHORT)
    manager.load(Faulty)
    for _ in range(2):
        submit(manager)
        manager.execute_hook("on_execute", None, ExecutionContext("n", "p", "t"))

    def count(hook_name: str, kind: str) -> float:
        return metrics.value("sandrun_plugin_hook_errors_total", plugin="faulty",
                             hook=hook_name, kind=kind)

    assert (count("on_submit", "error"), count("on_submit", "timeout")) == (2, 0)
    assert (count("on_execute", "error"), count("on_execute", "timeout")) == (0, 2)
    assert manager.hook_errors == {("faulty", "on_submit"): 2, ("faulty", "on_execute"): 2}
    assert manager.hook_timeouts == {("faulty", "on_execute"): 2}


def test_hook_control_still_propagates_from_timed_hooks() -> None:
    class Veto(Plugin):
        name = "veto"
        hook_timeout = 5

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise SubmissionRejected("no")

        async def on_execute(self, execution: Any, context: ExecutionContext) -> None:
            raise JobRejected("not here")

    manager = PluginManager()
    manager.load_all([Veto(), Tag()])
    with pytest.raises(SubmissionRejected, match="no"):
        submit(manager)
    with pytest.raises(SubmissionRejected):
        asyncio.run(manager.aexecute_hook("on_submit", Job(code="1"), CTX))
    with pytest.raises(JobRejected, match="not here"):
        manager.execute_hook("on_execute", None, ExecutionContext("n", "p", "t"))
    assert manager.hook_errors == {}


def test_a_plugin_that_keeps_hanging_is_refused_at_once_then_recovers() -> None:
    release = threading.Event()
    manager = PluginManager(hook_timeout=SHORT)
    events: list[PluginEvent] = []
    manager.on("hook_error", events.append)
    manager.load_all([hanging("hang", release), Tag()])
    for _ in range(MAX_HUNG_CALLS):
        submit(manager)
    assert submit(manager).args == ["tag"]  # refused at once: the event below says so
    assert [getattr(e.error, "hung", None) for e in events] == [0] * MAX_HUNG_CALLS + [
        MAX_HUNG_CALLS]
    assert "4 earlier calls of plugin 'hang' are still running" in str(events[-1].error)
    release.set()  # the abandoned calls return; their threads serve again
    deadline = time.monotonic() + 5
    while submit(manager).args != ["hang-late", "tag"]:
        assert time.monotonic() < deadline, "the plugin's threads never came back"
        time.sleep(0.01)


def test_once_hook_that_times_out_is_not_called_again(release: threading.Event) -> None:
    calls: list[int] = []

    class Once(Plugin):
        name = "once"
        hook_timeout = SHORT

        @hook(once=True)
        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            calls.append(1)
            release.wait(30)

    manager = PluginManager()
    manager.load_all([Once(), Tag()])
    assert submit(manager).args == ["tag"]
    assert submit(manager).args == ["tag"]
    assert calls == [1]
    assert manager.hook_timeouts == {("once", "on_submit"): 1}


def test_timed_hooks_see_the_callers_log_context() -> None:
    seen: list[Any] = []

    class Ctx(Plugin):
        name = "ctx"
        hook_timeout = 5

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            seen.append(structlog.contextvars.get_contextvars().get("job_id"))
            seen.append(threading.current_thread().name)

    manager = PluginManager()
    manager.load(Ctx)
    with structlog.contextvars.bound_contextvars(job_id="j-1"):
        submit(manager)
    assert seen == ["j-1", "sandrun-hook-ctx"]


def test_unloading_a_plugin_lets_its_idle_threads_exit() -> None:
    class Quick(Plugin):
        name = "quick"
        hook_timeout = 5

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            return None

    manager = PluginManager()
    manager.load(Quick)
    submit(manager)
    mine = [t for t in threading.enumerate() if t.name == "sandrun-hook-quick"]
    assert len(mine) == 1 and mine[0].daemon
    manager.unload("quick")
    mine[0].join(5)
    assert not mine[0].is_alive()


@pytest.mark.parametrize("bad", [-1, "5", float("nan"), True])
def test_bad_timeouts_are_refused_at_load_naming_the_plugin(bad: object) -> None:
    class Bad(Plugin):
        name = "bad"

        @hook(timeout=bad)  # type: ignore[arg-type]
        def on_submit(self, job: Job, context: SubmissionContext) -> None: ...

    Bad.hook_timeout = bad  # type: ignore[assignment]
    with pytest.raises(InvalidPlugin) as info:
        PluginManager().load(Bad)
    assert "plugin 'bad'" in str(info.value)
    assert f"hook_timeout is {bad!r}" in str(info.value)
    assert f"@hook(timeout=...) of on_submit is {bad!r}" in str(info.value)
    with pytest.raises(ConfigurationError, match="hook_timeout"):
        PluginManager(hook_timeout=-1)


def test_sandrun_hook_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDRUN_HOOK_TIMEOUT", raising=False)
    assert Settings().hook_timeout == 30
    monkeypatch.setenv("SANDRUN_HOOK_TIMEOUT", "2.5")
    assert Settings().hook_timeout == 2.5
