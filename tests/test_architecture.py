"""The wings' shape holds: no import cycles, nothing against the layering, every wing
says what it may import. (lint-imports holds the same contracts in make test; this
test keeps the facts the closing notes quote honest.)"""

from __future__ import annotations

import importlib
from pathlib import Path

from tests.support.architecture import ROOT, facts

WINGS = sorted(p.name for p in (ROOT / "worker").iterdir()
               if p.is_dir() and (p / "__init__.py").exists())


def test_no_cycles_and_nothing_against_the_layering() -> None:
    found = facts()
    assert found.cycles == []
    assert found.against_layering == 0
    assert set(found.modules_per_wing) == {"(shared)", *WINGS}


def test_every_wing_says_what_lives_there_and_what_it_may_import() -> None:
    for wing in WINGS:
        doc = importlib.import_module(f"worker.{wing}").__doc__ or ""
        assert "import" in doc.lower(), f"worker/{wing}/__init__.py must say what it may import"


def test_the_facts_see_a_cycle_when_there_is_one(tmp_path: Path) -> None:
    import grimp

    from tests.support.architecture import _cycles

    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph, {"pkg.a", "pkg.b", "pkg.c"}) == [["pkg.a", "pkg.b"]]
