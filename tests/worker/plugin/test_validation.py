"""Plugins are validated when they register; errors name plugin, hook and signature."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from worker import Job, Plugin, PluginDependency, PluginManager, PluginManifest, SubmissionContext
from worker.errors import InvalidPlugin, PluginConfigError


def test_missing_name() -> None:
    class Nameless(Plugin):
        pass

    with pytest.raises(InvalidPlugin, match="Nameless has no name"):
        PluginManager().load(Nameless)


@pytest.mark.parametrize("name", ["Bad Name", "UPPER", "1st", ""])
def test_bad_names(name: str) -> None:
    class P(Plugin):
        pass

    P.name = name
    with pytest.raises(InvalidPlugin):
        PluginManager().load(P)


def test_bad_version_and_priority_reported_together() -> None:
    class P(Plugin):
        name = "p"
        version = "one point oh"
        priority = "high"  # type: ignore[assignment]

    with pytest.raises(InvalidPlugin) as info:
        PluginManager().load(P)
    message = str(info.value)
    assert "'p'" in message and "PEP 440" in message and "priority 'high'" in message


def test_wrong_hook_signature_names_plugin_hook_and_signature() -> None:
    class P(Plugin):
        name = "sig"

        def on_submit(self, job: Job) -> None:  # type: ignore[override]
            pass

    with pytest.raises(InvalidPlugin) as info:
        PluginManager().load(P)
    message = str(info.value)
    assert "'sig'" in message and "hook on_submit(self, job) does not match" in message
    assert "on_submit(self, job, context)" in message


@pytest.mark.parametrize(("bad", "have"), [
    (lambda self, publication: None, "self, publication"),
    (lambda self, publication, context, job: None, "self, publication, context, job"),
])
def test_on_publish_signature_is_checked_like_every_hook(bad: Any, have: str) -> None:
    manager = PluginManager()
    manager.load(type("Good", (Plugin,), {"name": "signer", "on_publish":
                                          lambda self, publication, context: None}))
    assert [e.plugin for e in manager.hook_plan()["on_publish"]] == ["signer"]
    broken = type("Broken", (Plugin,), {"name": "signer", "on_publish": bad})
    with pytest.raises(InvalidPlugin) as info:
        PluginManager().load(broken)
    message = str(info.value)
    assert "plugin 'signer' (Broken) is invalid" in message
    assert (f"hook on_publish({have}) does not match the spec "
            "on_publish(self, publication, context)") in message


def test_extra_optional_parameters_are_allowed() -> None:
    class P(Plugin):
        name = "p"

        def on_submit(self, job: Job, context: SubmissionContext, extra: int = 0) -> None:
            pass

    PluginManager().load(P)


def test_unknown_on_method_is_refused() -> None:
    class P(Plugin):
        name = "typo"

        def on_sumbit(self, job: Job, context: Any) -> None:
            pass

    with pytest.raises(InvalidPlugin, match="on_sumbit is neither a spec hook"):
        PluginManager().load(P)


def test_non_callable_hook_attribute() -> None:
    class P(Plugin):
        name = "p"
        on_submit = 3  # type: ignore[assignment]

    with pytest.raises(InvalidPlugin, match="not a method"):
        PluginManager().load(P)


def test_not_a_plugin() -> None:
    with pytest.raises(Exception, match="not a Plugin"):
        PluginManager().load(object())  # type: ignore[arg-type]


def test_manifest_name_and_version_must_agree() -> None:
    class P(Plugin):
        name = "p"
        version = "1.0"
        manifest = PluginManifest(name="q", version="1.0")

    with pytest.raises(InvalidPlugin, match="manifest is named 'q'"):
        PluginManager().load(P)

    class V(Plugin):
        name = "v"
        version = "1.0"
        manifest = PluginManifest(name="v", version="2.0")

    with pytest.raises(InvalidPlugin, match="differs"):
        PluginManager().load(V)


def test_dependency_specifier_validated_at_declaration() -> None:
    with pytest.raises(InvalidPlugin, match="not a version specifier"):
        PluginDependency("x", "two")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int = 9100
    path: str


class Configured(Plugin):
    name = "configured"
    version = "1.0"
    manifest = PluginManifest(name="configured", version="1.0", configuration=Config)
    seen: Any = None

    def on_init(self, context: Any) -> None:
        self.seen = context.config


def test_config_validated_against_manifest_model() -> None:
    plugin = PluginManager().load(Configured(), {"path": "/x", "port": "9200"})
    assert isinstance(plugin, Configured)
    assert plugin.seen == Config(path="/x", port=9200)


@pytest.mark.parametrize(("config", "message"), [
    ({"port": 1}, "path: Field required"),
    ({"path": "/x", "prot": 1}, "prot: Extra inputs"),
    ({"path": "/x", "port": "high"}, "port: Input should be a valid integer"),
    ([1, 2], "must be a mapping"),
])
def test_bad_config_is_a_clear_error(config: Any, message: str) -> None:
    with pytest.raises(PluginConfigError) as info:
        PluginManager().load(Configured(), config)
    assert message in str(info.value) and "'configured'" in str(info.value)
    assert "sandrun plugins schema configured" in str(info.value) or message == "must be a mapping"


def test_config_for_a_plugin_without_model_is_refused() -> None:
    class P(Plugin):
        name = "plain"

    with pytest.raises(PluginConfigError, match="takes no configuration"):
        PluginManager().load(P, {"x": 1})
    PluginManager().load(P, {})


def test_custom_hooks_declared_implemented_and_called() -> None:
    class Quota(Plugin):
        name = "quota"
        custom_hooks = ("on_quota_check",)

    class Tenant(Plugin):
        name = "tenant"
        dependencies = (PluginDependency("quota"),)

        def on_quota_check(self, data: dict[str, int], context: Any) -> dict[str, int]:
            return {**data, "tenant": data.get("tenant", 0) + 1}

    manager = PluginManager()
    manager.load_all([Tenant(), Quota()])
    assert manager.execute_hook("on_quota_check", {"tenant": 1}) == {"tenant": 2}
    assert [e.plugin for e in manager.hook_plan()["on_quota_check"]] == ["tenant"]


def test_custom_hook_not_declared_anywhere_is_refused() -> None:
    class Tenant(Plugin):
        name = "tenant"

        def on_quota_check(self, data: Any, context: Any) -> None:
            pass

    with pytest.raises(InvalidPlugin, match="on_quota_check"):
        PluginManager().load(Tenant)
    manager = PluginManager()
    manager.declare_hooks("on_quota_check")
    manager.load(Tenant)


def test_custom_hook_names_are_checked() -> None:
    class Shadow(Plugin):
        name = "shadow"
        custom_hooks = ("on_submit", "quota")

    with pytest.raises(InvalidPlugin) as info:
        PluginManager().load(Shadow)
    assert "shadows a spec hook" in str(info.value) and "starting with 'on_'" in str(info.value)


def test_name_and_version_have_one_source_the_class() -> None:
    from worker import Plugin, PluginManifest
    from worker.plugin.validation import check_plugin

    class Single(Plugin):
        name = "single"
        version = "2.1.0"
        manifest = PluginManifest(description="no name or version repeated here")

    checked = check_plugin(Single(), set())
    assert (checked.name, str(checked.version)) == ("single", "2.1.0")

    class Disagrees(Single):
        manifest = PluginManifest(name="single", version="9.9.9")

    with pytest.raises(InvalidPlugin, match=r"manifest version '9\.9\.9' differs"):
        check_plugin(Disagrees(), set())
