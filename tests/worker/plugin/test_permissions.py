"""Permissions, one capability at a time: what a plugin declares, what the operator grants,
what dispatch refuses (discarded, ignored, logged, counted) and what it records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from worker import (
    ErrorContext,
    Execution,
    ExecutionContext,
    Job,
    JobDeferred,
    JobRejected,
    JobResult,
    Plugin,
    PluginManager,
    PluginManifest,
    Publication,
    PublishContext,
    ResultContext,
    RetryRequested,
    SubmissionContext,
    SubmissionRejected,
)
from worker.collector import InMemoryMetrics
from worker.errors import ConfigurationError, InvalidPlugin, PermissionRefused, PluginLoadError
from worker.plugin.loader import PluginSpec
from worker.plugin.permissions import ALL, parse_plugin_permissions
from worker.plugin.redact import REDACTED

METRIC = "sandrun_plugin_hook_errors_total"


def plugin(name: str, permissions: list[str] | None, **hooks: Any) -> Plugin:
    """A plugin named ``name`` implementing ``hooks`` and declaring ``permissions``
    (None: no manifest at all)."""
    attrs: dict[str, Any] = {"name": name, **{k: staticmethod(f) for k, f in hooks.items()}}
    if permissions is not None:
        attrs["manifest"] = PluginManifest(apis=sorted(hooks), permissions=permissions)
    return type(name.title(), (Plugin,), attrs)()


def manager(*plugins: Plugin, grants: str | None = None) -> tuple[PluginManager, InMemoryMetrics]:
    metrics = InMemoryMetrics()
    pm = PluginManager(metrics=metrics, permissions=parse_plugin_permissions(grants))
    pm.load_all(list(plugins))
    return pm, metrics


def refused(metrics: InMemoryMetrics, name: str, hook: str) -> float:
    return metrics.value(METRIC, plugin=name, hook=hook, kind="permission")


def relabel(job: Job, context: Any) -> Job:
    return job.replace(labels={**job.labels, "team": "x"}, timeout=9)


# -- declaring ----------------------------------------------------------------------

def test_apis_that_differ_from_the_methods_are_refused_naming_the_difference() -> None:
    class Liar(Plugin):
        name = "liar"
        manifest = PluginManifest(apis=["on_submit", "on_result"], permissions=[])

        def on_submit(self, job: Job, context: SubmissionContext) -> None: ...

        def on_execute(self, execution: Execution, context: ExecutionContext) -> None: ...

    with pytest.raises(InvalidPlugin, match=r"implements on_execute not listed; it lists "
                                            r"on_result it does not implement; set apis="
                                            r"\['on_execute', 'on_submit'\]"):
        PluginManager().load(Liar)


def test_unknown_permissions_are_refused_listing_the_known_ones() -> None:
    with pytest.raises(InvalidPlugin, match=r"permissions root are unknown; use job:transform"):
        PluginManager().load(plugin("greedy", ["root"], on_submit=relabel))


def test_an_undeclared_plugin_gets_every_permission() -> None:
    pm, _ = manager(plugin("legacy", None, on_submit=relabel))
    assert pm.loaded()[0].granted == ALL
    assert pm.on_submit(Job(code="1"), SubmissionContext()).labels == {"team": "x"}


# -- job:transform ------------------------------------------------------------------

def test_a_change_without_job_transform_is_discarded_logged_and_counted() -> None:
    pm, metrics = manager(plugin("sneaky", [], on_submit=relabel))
    job = Job(code="1")
    with capture_logs() as logs:
        assert pm.on_submit(job, SubmissionContext()) is job
    assert refused(metrics, "sneaky", "on_submit") == 1
    event = next(e for e in logs if e["event"] == "hook_permission_refused")
    assert event["permission"] == "job:transform"
    assert event["tried"] == "change timeout, labels"
    assert event["job_id"] == job.id


def test_a_change_with_job_transform_is_kept_and_recorded_as_provenance() -> None:
    pm, metrics = manager(plugin("tagger", ["job:transform"], on_submit=relabel))
    ctx = SubmissionContext()
    assert pm.on_submit(Job(code="1"), ctx).labels == {"team": "x"}
    assert refused(metrics, "tagger", "on_submit") == 0
    assert [(t.plugin, t.hook, t.fields) for t in ctx.provenance] == [
        ("tagger", "on_submit", ["timeout", "labels"])]


def test_an_equal_copy_is_no_change_and_needs_no_permission() -> None:
    pm, metrics = manager(plugin("copier", [], on_submit=lambda job, ctx: job.replace()))
    ctx = SubmissionContext()
    pm.on_submit(Job(code="1"), ctx)
    assert refused(metrics, "copier", "on_submit") == 0 and ctx.provenance == []


def test_a_refused_change_leaves_the_chain_going_with_the_data_unchanged() -> None:
    seen: list[dict[str, str]] = []
    pm, _ = manager(plugin("sneaky", [], on_submit=relabel),
                    plugin("after", [], on_submit=lambda job, ctx: seen.append(job.labels)))
    pm.on_submit(Job(code="1"), SubmissionContext())
    assert seen == [{}]


def test_a_publication_change_needs_job_transform() -> None:
    def reroute(pub: Publication, context: PublishContext) -> Publication:
        return Publication(pub.task, pub.task_id, "elsewhere", pub.args, priority=9)

    pm, metrics = manager(plugin("router", [], on_publish=reroute))
    pub = Publication("sandrun.run_job", "t1", "sandrun", [])
    with capture_logs() as logs:
        assert pm.on_publish(pub, PublishContext()) is pub
    assert refused(metrics, "router", "on_publish") == 1
    assert any(e.get("tried") == "change queue, priority" for e in logs)


def test_an_async_hook_is_checked_the_same_way() -> None:
    async def relabel_later(job: Job, context: Any) -> Job:
        return relabel(job, context)

    pm, metrics = manager(plugin("slow", [], on_submit=relabel_later))
    job = Job(code="1")
    assert pm.on_submit(job, SubmissionContext()) is job
    assert asyncio.run(pm.aexecute_hook("on_submit", job, SubmissionContext())) is job
    assert refused(metrics, "slow", "on_submit") == 2


# -- job:veto -----------------------------------------------------------------------

def veto(exc: BaseException) -> Any:
    def hook(data: Any, context: Any) -> None:
        raise exc
    return hook


@pytest.mark.parametrize(("hook", "exc", "data", "ctx"), [
    ("on_submit", SubmissionRejected("no"), Job(code="1"), SubmissionContext()),
    ("on_execute", JobRejected("no"), Execution(task="t", task_id="t1"),
     ExecutionContext(node_id="n", pool_id="p", task_id="t1")),
    ("on_execute", JobDeferred(5, "later"), Execution(task="t", task_id="t1"),
     ExecutionContext(node_id="n", pool_id="p", task_id="t1")),
])
def test_a_veto_without_job_veto_is_ignored_and_counted(hook: str, exc: BaseException,
                                                       data: Any, ctx: Any) -> None:
    after: list[str] = []
    pm, metrics = manager(plugin("bouncer", ["job:transform"], **{hook: veto(exc)}),
                          plugin("after", [], **{hook: lambda d, c: after.append("ran")}))
    with capture_logs() as logs:
        pm.execute_hook(hook, data, ctx)
    assert after == ["ran"]
    assert refused(metrics, "bouncer", hook) == 1
    event = next(e for e in logs if e["event"] == "hook_permission_refused")
    assert event["permission"] == "job:veto"
    assert event["tried"].startswith(f"raise {type(exc).__name__}")


def test_a_veto_with_job_veto_stops_the_job() -> None:
    pm, _ = manager(plugin("bouncer", ["job:veto"], on_submit=veto(SubmissionRejected("no"))))
    with pytest.raises(SubmissionRejected):
        pm.on_submit(Job(code="1"), SubmissionContext())


# -- result:transform ---------------------------------------------------------------

def test_a_result_change_needs_result_transform() -> None:
    def rewrite(result: JobResult, context: ResultContext) -> JobResult:
        return result.replace(stdout="forged")

    pm, metrics = manager(plugin("forger", ["job:transform"], on_result=rewrite))
    result = JobResult(id="j1", status="completed", stdout="real")
    assert pm.on_result(result, ResultContext(node_id="n", task_id="j1")).stdout == "real"
    assert refused(metrics, "forger", "on_result") == 1
    pm2, _ = manager(plugin("editor", ["result:transform"], on_result=rewrite))
    assert pm2.on_result(result, ResultContext(node_id="n", task_id="j1")).stdout == "forged"


def test_replacing_an_error_or_asking_for_a_retry_needs_result_transform() -> None:
    original = ValueError("boom")
    pm, metrics = manager(
        plugin("swapper", [], on_error=lambda e, c: RuntimeError("other")),
        plugin("retrier", ["storage"], on_error=veto(RetryRequested(1, "again"))))
    assert pm.on_error(original, ErrorContext(operation="execute")) is original
    assert refused(metrics, "swapper", "on_error") == 1
    assert refused(metrics, "retrier", "on_error") == 1
    pm2, _ = manager(plugin("retrier", ["result:transform"],
                            on_error=veto(RetryRequested(1, "again"))))
    with pytest.raises(RetryRequested):
        pm2.on_error(original, ErrorContext(operation="execute"))


# -- storage ------------------------------------------------------------------------

def test_storage_without_the_permission_is_refused_at_the_call() -> None:
    class Counter(Plugin):
        name = "counter"
        manifest = PluginManifest(apis=["on_submit"], permissions=[])

        def on_init(self, context: Any) -> None:
            self.storage = context.storage

        def on_submit(self, job: Job, context: SubmissionContext) -> None:
            self.storage.incr("submitted")

    pm, metrics = manager(Counter())
    with capture_logs() as logs:
        pm.on_submit(Job(code="1"), SubmissionContext())
    assert refused(metrics, "counter", "storage") == 1
    assert metrics.value(METRIC, plugin="counter", hook="on_submit", kind="error") == 0
    assert any(e["event"] == "hook_permission_refused" and
               e["tried"] == "call storage.incr('submitted')" for e in logs)
    with pytest.raises(PermissionRefused, match="needs the 'storage' permission"):
        pm.loaded()[0].context.storage.get("k")


def test_storage_used_in_on_init_without_the_permission_fails_the_load() -> None:
    class Eager(Plugin):
        name = "eager"
        manifest = PluginManifest(apis=[], permissions=["network"])

        def on_init(self, context: Any) -> None:
            context.storage.set("started", True)

    with pytest.raises(PluginLoadError, match="'eager' failed in on_init: PermissionRefused"):
        PluginManager().load(Eager)


def test_storage_with_the_permission_works() -> None:
    pm, _ = manager(plugin("keeper", ["storage"]))
    storage = pm.loaded()[0].context.storage
    storage.set("k", 1)
    assert storage.get("k") == 1


# -- secrets ------------------------------------------------------------------------

SECRET_JOB = Job(code="1", env={"API_KEY": "hunter2"})


def test_without_secrets_env_values_are_redacted_and_a_change_keeps_them() -> None:
    seen: list[dict[str, str]] = []

    def look(job: Job, context: Any) -> Job:
        seen.append(dict(job.env))
        return job.replace(labels={"seen": "yes"})

    pm, _ = manager(plugin("nosy", ["job:transform"], on_submit=look))
    out = pm.on_submit(SECRET_JOB, SubmissionContext())
    assert seen == [{"API_KEY": REDACTED}]
    assert out.env == {"API_KEY": "hunter2"} and out.labels == {"seen": "yes"}


def test_with_secrets_env_values_are_seen() -> None:
    seen: list[dict[str, str]] = []
    pm, _ = manager(plugin("trusted", ["secrets"],
                           on_submit=lambda job, ctx: seen.append(dict(job.env))))
    pm.on_submit(SECRET_JOB, SubmissionContext())
    assert seen == [{"API_KEY": "hunter2"}]


def test_without_secrets_the_message_and_auth_headers_are_redacted() -> None:
    seen: list[Any] = []

    def look(execution: Execution, context: ExecutionContext) -> None:
        seen.extend([execution.job.env if execution.job else None, context.headers,
                     context.args[0]["env"], context.metadata])
        context.metadata["looked"] = True

    payload = SECRET_JOB.model_dump(mode="json")
    ctx = ExecutionContext(node_id="n", pool_id="p", task_id=SECRET_JOB.id, args=[payload],
                           headers={"sandrun_auth": "sig", "sandrun_submitted_at": "1"})
    pm, _ = manager(plugin("watcher", [], on_execute=look))
    pm.on_execute(Execution(task="t", task_id=SECRET_JOB.id, job=SECRET_JOB,
                            task_args=[payload]), ctx)
    assert seen[:3] == [{"API_KEY": REDACTED},
                        {"sandrun_auth": REDACTED, "sandrun_submitted_at": "1"},
                        {"API_KEY": REDACTED}]
    assert ctx.metadata == {"looked": True}  # what it writes to the context is kept
    assert ctx.headers["sandrun_auth"] == "sig"


def test_a_signature_added_by_a_plugin_without_secrets_is_kept() -> None:
    def sign(pub: Publication, context: PublishContext) -> Publication:
        return Publication(pub.task, pub.task_id, pub.queue, pub.args,
                           headers={**pub.headers, "x_note": "added"})

    payload = SECRET_JOB.model_dump(mode="json")
    pub = Publication("sandrun.run_job", SECRET_JOB.id, "q", [payload],
                      headers={"sandrun_auth": "sig"})
    pm, _ = manager(plugin("noter", ["job:transform"], on_publish=sign))
    out = pm.on_publish(pub, PublishContext(job=SECRET_JOB))
    assert out.headers == {"sandrun_auth": "sig", "x_note": "added"}
    assert out.args[0]["env"] == {"API_KEY": "hunter2"}


# -- the operator's narrowing -------------------------------------------------------

def test_the_operator_narrows_a_plugin_to_a_subset() -> None:
    pm, metrics = manager(plugin("tagger", ["job:transform", "storage"], on_submit=relabel),
                          grants="tagger=storage")
    assert pm.loaded()[0].granted == {"storage"}
    assert pm.on_submit(Job(code="1"), SubmissionContext()).labels == {}
    assert refused(metrics, "tagger", "on_submit") == 1


def test_the_operator_narrows_an_undeclared_plugin_too() -> None:
    pm, _ = manager(plugin("legacy", None, on_submit=relabel), grants="legacy=")
    assert pm.loaded()[0].granted == frozenset()
    assert pm.on_submit(Job(code="1"), SubmissionContext()).labels == {}


def test_granting_more_than_declared_fails_at_load_saying_what_to_remove() -> None:
    with pytest.raises(ConfigurationError, match=r"SANDRUN_PLUGIN_PERMISSIONS grants plugin "
                                                 r"'tagger' network, which it does not declare"
                                                 r".*remove network"):
        manager(plugin("tagger", ["job:transform"]), grants="tagger=job:transform,network")


def test_a_spec_narrows_like_the_setting() -> None:
    pm = PluginManager(permissions=parse_plugin_permissions("tagger=job:transform,storage"))
    pm.load_all([PluginSpec(plugin("tagger", ["job:transform", "storage"]),
                            permissions=frozenset({"storage"}))])
    assert pm.loaded()[0].granted == {"storage"}


@pytest.mark.parametrize(("raw", "message"), [
    ("tagger", r"item 1 \('tagger'\) is not 'plugin-name=permissions'"),
    ("tagger=storage;Bad Name=x", r"item 2 .* is not 'plugin-name=permissions'"),
    ("tagger=storage,root", r"unknown permission\(s\) root"),
    ("a=storage;a=network", "names plugin 'a' twice"),
])
def test_bad_grants_say_how_to_write_them(raw: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_plugin_permissions(raw)


def test_grants_parse() -> None:
    assert parse_plugin_permissions(" retry = storage , result:transform ; quota= ;") == {
        "retry": frozenset({"storage", "result:transform"}), "quota": frozenset()}
    assert parse_plugin_permissions(None) == {} and parse_plugin_permissions("") == {}


def test_every_built_in_plugin_declares_its_apis_and_permissions() -> None:
    from worker.plugin.loader import available_entry_points, resolve_ref
    from worker.plugin.validation import check_plugin

    built_in = {n for n, ep in available_entry_points().items() if ep.value.startswith("plugins.")}
    assert built_in >= {"auth", "defaults", "logging", "metrics", "retry", "scheduling"}
    declared = {name: check_plugin(resolve_ref(name), {"on_beat"}, must_declare=True).permissions
                for name in sorted(built_in)}
    assert declared["logging"] == frozenset()  # it only observes
    assert "secrets" not in declared["metrics"] and "secrets" not in declared["defaults"]


def test_a_grant_naming_no_configured_plugin_is_logged_at_validation() -> None:
    pm = PluginManager(permissions=parse_plugin_permissions("retyr=storage"))
    with capture_logs() as logs:
        pm.validate([plugin("retry", ["storage"])])
    assert [(e["event"], e["names"]) for e in logs if e["log_level"] == "warning"] == [
        ("plugin_permissions_unmatched", ["retyr"])]
