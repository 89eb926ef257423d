"""Dependency resolution: which plugins may load, and in which order.

``resolve`` looks at a batch of plugins about to load together with the plugins
already loaded, and either returns the batch in dependency order (dependencies
first, otherwise the order given) or raises one
:class:`~worker.errors.DependencyError` listing every missing, conflicting and
cyclic dependency at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from packaging.version import Version

from worker.errors import DependencyError
from worker.plugin.validation import CheckedPlugin


def _version_problems(batch: Sequence[CheckedPlugin], loaded: Mapping[str, Version]) -> list[str]:
    available = {**loaded, **{p.name: p.version for p in batch}}
    problems = []
    for plugin in batch:
        for dep in plugin.dependencies:
            version = available.get(dep.name)
            want = f" {dep.version}" if dep.version else ""
            if version is None:
                if not dep.optional:
                    problems.append(
                        f"plugin {plugin.name!r} requires {dep.name!r}{want}, which is neither "
                        f"loaded nor being loaded; install and load {dep.name!r} first, or "
                        "declare the dependency optional")
            elif not dep.specifier.contains(version, prereleases=True):
                where = "loaded" if dep.name in loaded else "being loaded"
                problems.append(f"plugin {plugin.name!r} requires {dep.name!r}{want}, but version "
                                f"{version} is {where}; install a matching version")
    return problems


def _order(names: Sequence[str], edges: Mapping[str, list[str]]
           ) -> tuple[list[str], list[str] | None]:
    """Depth-first order (dependencies first, else as given), or the first cycle found."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in done:
            return None
        if name in path:
            return [*path[path.index(name):], name]
        for dep in edges[name]:
            cycle = visit(dep, [*path, name])
            if cycle:
                return cycle
        done.add(name)
        order.append(name)
        return None

    for name in names:
        cycle = visit(name, [])
        if cycle:
            return order, cycle
    return order, None


def resolve(batch: Sequence[CheckedPlugin], loaded: Mapping[str, Version]) -> list[CheckedPlugin]:
    """Return ``batch`` in load order, or raise DependencyError naming every problem."""
    problems: list[str] = []
    names = [p.name for p in batch]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"plugin {name!r} appears twice in the batch; load each plugin once")
    problems += _version_problems(batch, loaded)
    by_name = {p.name: p for p in batch}
    edges = {p.name: [d.name for d in p.dependencies if d.name in by_name] for p in batch}
    order, cycle = _order(list(by_name), edges)
    if cycle:  # optional dependencies only order plugins; drop them to break a cycle
        required = {p.name: [d.name for d in p.dependencies if d.name in by_name
                             and not d.optional] for p in batch}
        order, cycle = _order(list(by_name), required)
    if cycle:
        problems.append("dependency cycle: " + " -> ".join(cycle)
                        + "; break it by making one of these dependencies optional")
    if problems:
        raise DependencyError(problems)
    return [by_name[name] for name in order]
