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
from worker.validation import CheckedPlugin


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


def _cycle(edges: Mapping[str, list[str]], start: str) -> list[str]:
    path, seen = [start], {start}
    while True:
        nxt = next(n for n in edges[path[-1]] if n in edges)
        if nxt in seen:
            return [*path[path.index(nxt):], nxt]
        path.append(nxt)
        seen.add(nxt)


def resolve(batch: Sequence[CheckedPlugin], loaded: Mapping[str, Version]) -> list[CheckedPlugin]:
    """Return ``batch`` in load order, or raise DependencyError naming every problem."""
    problems: list[str] = []
    names = [p.name for p in batch]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"plugin {name!r} appears twice in the batch; load each plugin once")
    problems += _version_problems(batch, loaded)
    by_name = {p.name: p for p in batch}
    pending = {p.name: [d.name for d in p.dependencies if d.name in by_name] for p in batch}
    required = {p.name: {d.name for d in p.dependencies if not d.optional} for p in batch}
    order: list[CheckedPlugin] = []
    while pending:
        ready = [n for n in by_name if n in pending and not any(d in pending for d in pending[n])]
        if not ready:
            relaxed = {n: [d for d in deps if d in required[n]] for n, deps in pending.items()}
            if relaxed != pending:
                pending = relaxed  # optional edges only order plugins; drop them to break a cycle
                continue
            cycle = _cycle(pending, next(iter(pending)))
            problems.append("dependency cycle: " + " -> ".join(cycle)
                            + "; break it by making one of these dependencies optional")
            break
        for name in ready:
            order.append(by_name[name])
            del pending[name]
    if problems:
        raise DependencyError(problems)
    return order
