"""Import-graph facts about ``worker/``, from grimp (what import-linter is built on).

``python -m tests.support.architecture`` prints them: modules per wing, import
levels (the longest chain of imports, plus one), cycles, and imports that run
against the wings' layering. tests/test_architecture.py holds the same facts.
"""

from __future__ import annotations

import functools
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Facts:
    modules_per_wing: dict[str, int]
    levels: int
    runtime_levels: int
    cycles: list[list[str]]
    against_layering: int
    longest_modules: list[tuple[str, int]]
    lines: dict[str, int]


def _wing(module: str) -> str:
    """The sub-package a module belongs to; top-level modules are the shared ones."""
    parts = module.split(".")
    if len(parts) > 2 or (ROOT / "worker" / parts[1]).is_dir():
        return parts[1]
    return "(shared)"


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for module in sorted(modules - placed):
        if module in placed:
            continue
        group = {other for other in modules - {module}
                 if graph.chain_exists(importer=module, imported=other)
                 and graph.chain_exists(importer=other, imported=module)}
        if group:
            placed |= group | {module}
            groups.append(sorted(group | {module}))
    return groups


def _levels(graph: grimp.ImportGraph, modules: set[str]) -> int:
    @functools.cache
    def level(module: str) -> int:
        below = graph.find_modules_directly_imported_by(module) & modules
        return 1 + max((level(m) for m in below), default=0)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    return max(level(m) for m in modules)


def _layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    return [{part.strip() for part in layer.split("|")} for layer in contract["layers"]]


def facts() -> Facts:
    """Measure the graph of ``worker`` as it is on disk now."""
    graph = grimp.build_graph("worker")
    runtime = grimp.build_graph("worker", exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if m != "worker"}
    illegal = graph.find_illegal_dependencies_for_layers(
        layers=[grimp.Layer(*sorted(layer), independent=True) for layer in _layers()],
        containers={"worker"})
    sizes = sorted(((m, _lines(m)) for m in modules), key=lambda item: -item[1])
    return Facts(dict(sorted(Counter(_wing(m) for m in modules).items())),
                 0 if _cycles(graph, modules) else _levels(graph, modules),
                 0 if _cycles(graph, modules) else _levels(runtime, modules),
                 _cycles(graph, modules), sum(len(d.routes) for d in illegal), sizes[:5],
                 dict(sizes))


def _lines(module: str) -> int:
    base = ROOT / module.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return len(path.read_text().splitlines())


if __name__ == "__main__":
    found = facts()
    print("modules per wing:", ", ".join(f"{w} {n}" for w, n in found.modules_per_wing.items()),
          f"(total {sum(found.modules_per_wing.values())})")
    print("import levels:", found.levels, f"({found.runtime_levels} without TYPE_CHECKING imports)")
    print("cycles:", len(found.cycles), found.cycles or "")
    print("imports against the layering:", found.against_layering)
    print("longest modules:", ", ".join(f"{m} {n}" for m, n in found.longest_modules))
