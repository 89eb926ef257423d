"""Dispatch semantics: ordering, chaining, isolation, once, async, veto, events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker import (
    ExecutionContext,
    Job,
    JobRejected,
    Plugin,
    PluginContext,
    PluginEvent,
    PluginManager,
    SubmissionContext,
    SubmissionRejected,
    hook,
)
from worker.collector import InMemoryMetrics
from worker.errors import (
    ConfigurationError,
    HookCallError,
    PluginAlreadyLoaded,
    PluginLoadError,
    PluginNotLoaded,
)

CTX = SubmissionContext(producer="test")


def tagger(name: str, priority: int = 0, calls: list[str] | None = None) -> Plugin:
    """A plugin that appends its name to job.args and records its call."""

    class Tagger(Plugin):
        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            if calls is not None:
                calls.append(name)
            return job.replace(args=[*job.args, name])

    Tagger.name = name
    Tagger.priority = priority
    return Tagger()


def run_submit(manager: PluginManager, job: Job | None = None) -> Job:
    result: Job = manager.execute_hook("on_submit", job or Job(code="1"), CTX)
    return result


def test_higher_priority_first_ties_in_load_order() -> None:
    manager = PluginManager()
    manager.load_all([tagger("low", -5), tagger("first", 0), tagger("high", 10),
                      tagger("second", 0)])
    assert run_submit(manager).args == ["high", "first", "second", "low"]
    plan = [e.plugin for e in manager.hook_plan()["on_submit"]]
    assert plan == ["high", "first", "second", "low"]


def test_hook_decorator_priority_overrides_class_priority() -> None:
    class Early(Plugin):
        name = "early"

        @hook(priority=50)
        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            return job.replace(args=[*job.args, "early"])

    manager = PluginManager()
    manager.load(tagger("normal", 10))
    manager.load(Early)
    assert run_submit(manager).args == ["early", "normal"]


def test_none_return_leaves_data_unchanged_and_value_replaces() -> None:
    seen: list[list[str]] = []

    class Observer(Plugin):
        name = "observer"
        priority = -1

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            seen.append(list(job.args))

    manager = PluginManager()
    manager.load_all([tagger("a", 5), Observer(), tagger("b", -10)])
    assert run_submit(manager).args == ["a", "b"]
    assert seen == [["a"]]


def test_raising_hook_is_isolated_logged_counted_and_reported() -> None:
    class Broken(Plugin):
        name = "broken"
        priority = 5

        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            raise RuntimeError("boom")

    metrics = InMemoryMetrics()
    manager = PluginManager(metrics=metrics)
    events: list[PluginEvent] = []
    manager.on("hook_error", events.append)
    manager.load_all([Broken(), tagger("after")])
    job = Job(code="1")
    ctx = SubmissionContext(job_id=job.id)
    assert manager.execute_hook("on_submit", job, ctx).args == ["after"]
    assert manager.hook_errors[("broken", "on_submit")] == 1
    assert metrics.value("sandrun_plugin_hook_errors_total", plugin="broken",
                         hook="on_submit", kind="error") == 1
    assert len(events) == 1
    event = events[0]
    assert (event.plugin, event.hook, event.job_id) == ("broken", "on_submit", job.id)
    assert isinstance(event.error, RuntimeError)


def test_hook_error_log_names_plugin_hook_and_job(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    class Broken(Plugin):
        name = "broken"

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise ValueError("bad")

    manager = PluginManager()
    manager.load(Broken)
    job = Job(code="1")
    with structlog.testing.capture_logs() as logs:
        run_submit(manager, job)
    failed = [e for e in logs if e["event"] == "hook_failed"]
    assert failed and failed[0]["plugin"] == "broken" and failed[0]["hook"] == "on_submit"
    assert failed[0]["job_id"] == job.id and failed[0]["error_type"] == "ValueError"


@pytest.mark.parametrize(("hook_name", "exc", "ctx"), [
    ("on_submit", SubmissionRejected("no"), CTX),
    ("on_execute", JobRejected("no"), ExecutionContext(node_id="n", pool_id="p", task_id="t")),
])
def test_control_flow_exceptions_propagate(hook_name: str, exc: Exception, ctx: Any) -> None:
    calls: list[str] = []

    class Veto(Plugin):
        name = "veto"
        priority = 10

    def veto(self: Plugin, data: Any, context: Any) -> None:
        raise exc

    setattr(Veto, hook_name, veto)
    manager = PluginManager()
    manager.load_all([Veto(), tagger("after", calls=calls)])
    with pytest.raises(type(exc)):
        manager.execute_hook(hook_name, Job(code="1"), ctx)
    assert calls == []
    assert manager.hook_errors == {}


def test_once_hooks_run_a_single_time() -> None:
    class Once(Plugin):
        name = "once"

        @hook(once=True)
        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            return job.replace(args=[*job.args, "once"])

    manager = PluginManager()
    manager.load_all([Once(), tagger("always", -1)])
    assert run_submit(manager).args == ["once", "always"]
    assert run_submit(manager).args == ["always"]
    assert [e.plugin for e in manager.hook_plan()["on_submit"]] == ["always"]


def test_once_hook_that_raises_is_still_removed() -> None:
    class Once(Plugin):
        name = "once"

        @hook(once=True)
        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            raise RuntimeError("first and last")

    manager = PluginManager()
    manager.load(Once)
    run_submit(manager)
    run_submit(manager)
    assert manager.hook_errors[("once", "on_submit")] == 1


class AsyncTagger(Plugin):
    name = "async-tagger"

    async def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        await asyncio.sleep(0)
        return job.replace(args=[*job.args, "async"])


def test_async_hooks_from_sync_code() -> None:
    manager = PluginManager()
    manager.load_all([AsyncTagger(), tagger("sync", -1)])
    assert run_submit(manager).args == ["async", "sync"]
    assert manager.hook_plan()["on_submit"][0].is_async


def test_async_hooks_through_aexecute_hook() -> None:
    manager = PluginManager()
    manager.load_all([tagger("sync", 1), AsyncTagger()])

    async def main() -> Job:
        job: Job = await manager.aexecute_hook("on_submit", Job(code="1"), CTX)
        return job

    assert asyncio.run(main()).args == ["sync", "async"]


def test_failing_async_hook_is_isolated() -> None:
    class Failing(Plugin):
        name = "failing"

        async def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            raise RuntimeError("async boom")

    manager = PluginManager()
    manager.load_all([Failing(), tagger("after", -1)])
    assert run_submit(manager).args == ["after"]
    assert asyncio.run(manager.aexecute_hook("on_submit", Job(code="1"), CTX)).args == ["after"]
    assert manager.hook_errors[("failing", "on_submit")] == 2


def test_sync_dispatch_of_async_hook_inside_a_loop_is_a_clear_error() -> None:
    manager = PluginManager()
    manager.load(AsyncTagger)

    async def main() -> None:
        run_submit(manager)

    with pytest.raises(HookCallError, match="aexecute_hook"):
        asyncio.run(main())


def test_async_on_init_and_on_destroy() -> None:
    log: list[str] = []

    class AsyncLife(Plugin):
        name = "life"

        async def on_init(self, context: PluginContext) -> None:
            log.append(f"init:{context.name}")

        async def on_destroy(self) -> None:
            log.append("destroy")

    manager = PluginManager()
    manager.load(AsyncLife)
    manager.unload("life")
    assert log == ["init:life", "destroy"]


def test_unknown_and_lifecycle_hook_names_are_refused() -> None:
    manager = PluginManager()
    with pytest.raises(HookCallError, match="unknown hook 'on_sumbit'"):
        manager.execute_hook("on_sumbit", 1)
    with pytest.raises(HookCallError, match="called by the manager"):
        manager.execute_hook("on_init", 1)
    assert manager.execute_hook("on_result", "same") == "same"


def test_events_loaded_unloaded_and_unsubscribe() -> None:
    manager = PluginManager()
    seen: list[tuple[str, str]] = []
    stop = manager.on("plugin_loaded", lambda e: seen.append((e.event, e.plugin)))
    manager.on("plugin_unloaded", lambda e: seen.append((e.event, e.plugin)))
    manager.load(tagger("a"))
    manager.unload("a")
    stop()
    manager.load(tagger("b"))
    assert seen == [("plugin_loaded", "a"), ("plugin_unloaded", "a")]
    with pytest.raises(ConfigurationError, match="unknown event"):
        manager.on("plugin-loaded", print)


def test_broken_event_listener_does_not_break_loading() -> None:
    manager = PluginManager()
    manager.on("plugin_loaded", lambda e: 1 / 0)  # type: ignore[func-returns-value]
    manager.load(tagger("a"))
    assert "a" in manager


def test_on_init_gets_context_and_failure_aborts_load() -> None:
    got: list[PluginContext] = []

    class Good(Plugin):
        name = "good"

        def on_init(self, context: PluginContext) -> None:
            got.append(context)

    class Bad(Plugin):
        name = "bad"

        def on_init(self, context: PluginContext) -> None:
            raise OSError("cannot open socket")

    manager = PluginManager()
    with pytest.raises(PluginLoadError, match="'bad' failed in on_init: OSError"):
        manager.load_all([Good(), Bad()])
    assert "good" not in manager and "bad" not in manager
    assert got[0].name == "good" and got[0].config is None
    got[0].storage.set("k", 1)


def test_unload_unregisters_hooks_and_calls_on_destroy() -> None:
    destroyed: list[str] = []

    class Life(Plugin):
        name = "life"

        def on_submit(self, job: Job, context: SubmissionContext) -> Job:
            return job.replace(args=["life"])

        def on_destroy(self) -> None:
            destroyed.append("life")

    manager = PluginManager()
    manager.load(Life)
    assert run_submit(manager).args == ["life"]
    manager.unload("life")
    assert run_submit(manager).args == []
    assert destroyed == ["life"]
    assert manager.hook_plan() == {}


def test_unload_unknown_and_double_load() -> None:
    manager = PluginManager()
    with pytest.raises(PluginNotLoaded, match="'ghost' is not loaded"):
        manager.unload("ghost")
    manager.load(tagger("a"))
    with pytest.raises(PluginAlreadyLoaded, match="'a' is already loaded"):
        manager.load(tagger("a"))


def test_close_unloads_dependents_first() -> None:
    from worker import PluginDependency

    order: list[str] = []

    def make(name: str, deps: tuple[PluginDependency, ...] = ()) -> Plugin:
        class P(Plugin):
            dependencies = deps

            def on_destroy(self) -> None:
                order.append(name)

        P.name = name
        return P()

    manager = PluginManager()
    manager.load_all([make("app", (PluginDependency("base"),)), make("base")])
    manager.close()
    assert order == ["app", "base"]


def test_introspection() -> None:
    manager = PluginManager()
    manager.load(tagger("a", 3))
    (item,) = manager.loaded()
    assert item.checked.name == "a" and list(item.checked.hooks) == ["on_submit"]
    assert manager.get("a").name == "a"
    with pytest.raises(PluginNotLoaded):
        manager.get("b")
