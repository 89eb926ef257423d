"""Loading by instance, class, factory, dotted path and entry point; SANDRUN_PLUGINS."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from worker import Plugin, PluginManager
from worker.errors import ConfigurationError, InvalidPlugin, PluginNotFound
from worker.plugin.loader import PluginSpec, available_entry_points, parse_plugin_specs, resolve_ref
from worker.plugin.permissions import ALL, parse_plugin_permissions


class Sample(Plugin):
    name = "sample"
    version = "1.2.3"


def sample_factory() -> Plugin:
    return Sample()


sample_instance = Sample()
CONSTANT = "plugin"


def not_a_factory() -> int:
    return 42


@pytest.mark.parametrize("ref", [
    Sample, Sample(), f"{__name__}:Sample", f"{__name__}:sample_factory",
    f"{__name__}:sample_instance",
])
def test_each_kind_of_reference(ref: object) -> None:
    plugin = resolve_ref(ref)  # type: ignore[arg-type]
    assert isinstance(plugin, Sample)


@pytest.mark.parametrize(("ref", "message"), [
    ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
    (f"{__name__}:Missing", "has no attribute 'Missing'"),
    (f"{__name__}:not_a_factory", "returned 42, not a Plugin"),
    (f"{__name__}:test_each_kind_of_reference", "calling it without arguments failed"),
    (f"{__name__}:CONSTANT", "not a Plugin subclass"),
    ("not-installed", "no plugin named 'not-installed'"),
])
def test_unresolvable_references(ref: str, message: str) -> None:
    with pytest.raises(PluginNotFound, match=message):
        resolve_ref(ref)


def test_builtin_entry_point_is_installed() -> None:
    assert available_entry_points()["defaults"].value == "plugins.defaults:DefaultsPlugin"
    assert resolve_ref("defaults").name == "defaults"


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A tiny installed distribution declaring plugins in the sandrun.plugins group:
    ``greeter`` declares its apis and permissions, ``shy`` (the same code) does not."""
    (tmp_path / "sandrun_greeter.py").write_text(textwrap.dedent("""
        from worker import Plugin, PluginManifest

        class Greeter(Plugin):
            name = "greeter"
            version = "0.3.0"
            manifest = PluginManifest(apis=["on_submit"], permissions=["job:transform"])

            def on_submit(self, job, context):
                return job.replace(labels={**job.labels, "greeted": "yes"})

        class Shy(Plugin):
            name = "shy"

            def on_submit(self, job, context):
                return job.replace(labels={**job.labels, "greeted": "yes"})
    """))
    info = tmp_path / "sandrun_greeter-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sandrun-greeter\n"
                                   "Version: 0.3.0\n")
    (info / "entry_points.txt").write_text("[sandrun.plugins]\ngreeter = sandrun_greeter:Greeter\n"
                                           "shy = sandrun_greeter:Shy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "greeter"
    sys.modules.pop("sandrun_greeter", None)


def test_third_party_plugin_by_entry_point_name(third_party: str) -> None:
    from worker import Job

    assert third_party in available_entry_points()
    manager = PluginManager()
    manager.load(third_party)
    job = manager.execute_hook("on_submit", Job(code="1"))
    assert job.labels == {"greeted": "yes"}


def test_an_installed_plugin_must_declare_apis_and_permissions(third_party: str) -> None:
    with pytest.raises(InvalidPlugin, match=r"installed package must declare.*"
                                            r"apis=\['on_submit'\], permissions="):
        PluginManager().load("shy")
    # the same class, given as code, is undeclared: loaded with every permission
    manager = PluginManager()
    manager.load("sandrun_greeter:Shy")
    assert manager.loaded()[0].granted == ALL


def test_an_installed_plugin_narrowed_by_the_operator_loses_its_change(third_party: str) -> None:
    from worker import Job

    manager = PluginManager(permissions=parse_plugin_permissions("greeter="))
    manager.load(third_party)
    assert manager.execute_hook("on_submit", Job(code="1")).labels == {}
    assert manager.hook_errors[("greeter", "on_submit")] == 1


def test_broken_entry_point_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "broken_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sandrun.plugins]\nbroken = not_a_module_q:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginNotFound, match=r"entry point 'broken'.*failed to import"):
        resolve_ref("broken")


def test_parse_plugin_specs() -> None:
    specs = parse_plugin_specs('["retry", "pkg.mod:Thing", {"name": "metrics", '
                               '"config": {"port": 9100}}, {"name": "logging"}]')
    assert specs == [PluginSpec("retry"), PluginSpec("pkg.mod:Thing"),
                     PluginSpec("metrics", {"port": 9100}), PluginSpec("logging")]
    assert parse_plugin_specs(None) == [] and parse_plugin_specs("  ") == []


@pytest.mark.parametrize(("raw", "message"), [
    ("[retry]", "not valid JSON"),
    ('{"name": "x"}', "must be a JSON list"),
    ("[1]", r"SANDRUN_PLUGINS\[0\] is 1"),
    ('[{"name": "x", "conf": {}}]', "objects take 'name'"),
    ('[{"name": "x", "config": [1]}]', "objects take 'name'"),
    ('[""]', "SANDRUN_PLUGINS"),
])
def test_parse_plugin_specs_errors(raw: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_plugin_specs(raw)
