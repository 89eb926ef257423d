"""Dependency resolution: satisfied, missing, optional, version conflicts, cycles."""

from __future__ import annotations

import pytest

from worker import Plugin, PluginDependency, PluginManager
from worker.errors import DependencyError, UnloadRefused


def make(name: str, version: str = "1.0.0", *deps: PluginDependency) -> Plugin:
    cls = type(f"P_{name}", (Plugin,), {"name": name, "version": version, "dependencies": deps})
    return cls()  # type: ignore[no-any-return]


def loaded_order(manager: PluginManager) -> list[str]:
    return [p.checked.name for p in manager.loaded()]


def test_dependencies_load_first_whatever_the_given_order() -> None:
    manager = PluginManager()
    manager.load_all([make("app", "1.0", PluginDependency("db", ">=2.0")),
                      make("db", "2.1"), make("cache")])
    assert loaded_order(manager) == ["db", "app", "cache"]


def test_dependency_already_loaded_is_satisfied() -> None:
    manager = PluginManager()
    manager.load(make("db", "2.1"))
    manager.load(make("app", "1.0", PluginDependency("db", ">=2,<3")))
    assert loaded_order(manager) == ["db", "app"]


def test_missing_required_dependency() -> None:
    with pytest.raises(DependencyError, match=r"'app' requires 'db' >=2\.0, which is neither"):
        PluginManager().load(make("app", "1.0", PluginDependency("db", ">=2.0")))


def test_missing_optional_dependency_is_fine() -> None:
    manager = PluginManager()
    manager.load(make("app", "1.0", PluginDependency("metrics", optional=True)))
    assert loaded_order(manager) == ["app"]


def test_present_optional_dependency_still_orders_and_checks_version() -> None:
    manager = PluginManager()
    manager.load_all([make("app", "1.0", PluginDependency("metrics", optional=True)),
                      make("metrics")])
    assert loaded_order(manager) == ["metrics", "app"]
    with pytest.raises(DependencyError, match=r"version 1\.0\.0 is being loaded"):
        PluginManager().load_all([make("app", "1.0", PluginDependency("m", ">=2", optional=True)),
                                  make("m")])


def test_version_conflict_with_loaded_plugin() -> None:
    manager = PluginManager()
    manager.load(make("db", "1.4"))
    with pytest.raises(DependencyError, match=r"requires 'db' >=2\.0, but version 1\.4 is loaded"):
        manager.load(make("app", "1.0", PluginDependency("db", ">=2.0")))


def test_cycle_is_reported_with_its_path() -> None:
    with pytest.raises(DependencyError) as info:
        PluginManager().load_all([
            make("a", "1", PluginDependency("b")), make("b", "1", PluginDependency("c")),
            make("c", "1", PluginDependency("a"))])
    assert "dependency cycle: a -> b -> c -> a" in str(info.value)


def test_cycle_through_an_optional_edge_is_broken() -> None:
    manager = PluginManager()
    manager.load_all([make("a", "1", PluginDependency("b", optional=True)),
                      make("b", "1", PluginDependency("a"))])
    assert loaded_order(manager) == ["a", "b"]


def test_all_problems_in_one_error_and_nothing_loaded() -> None:
    manager = PluginManager()
    with pytest.raises(DependencyError) as info:
        manager.load_all([make("ok"), make("x", "1", PluginDependency("missing")),
                          make("y", "1", PluginDependency("ok", ">=5")), make("ok")])
    problems = info.value.problems
    assert len(problems) == 3
    assert any("appears twice" in p for p in problems)
    assert manager.loaded() == []


def test_unload_refused_while_required_by_another() -> None:
    manager = PluginManager()
    manager.load_all([make("db"), make("app", "1", PluginDependency("db"))])
    with pytest.raises(UnloadRefused, match="cannot unload 'db': app depend"):
        manager.unload("db")
    manager.unload("app")
    manager.unload("db")


def test_unload_allowed_when_dependency_is_optional() -> None:
    manager = PluginManager()
    manager.load_all([make("db"), make("app", "1", PluginDependency("db", optional=True))])
    manager.unload("db")
    assert loaded_order(manager) == ["app"]
