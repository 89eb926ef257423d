"""The public face ``worker``: every name in ``__all__`` is importable, typed, and
imported only when first used (``import worker`` alone imports no Celery)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import worker

INIT = Path(worker.__file__)


def imported_modules(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``prefixes`` that ``code`` leaves imported, run in
    a fresh interpreter (this one has imported everything already)."""
    script = (f"{code}; import sys; "
              f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return list(ast.literal_eval(out.strip().splitlines()[-1]))


def type_checking_imports() -> dict[str, tuple[str, str]]:
    """``name -> (module, attribute)`` of the ``if TYPE_CHECKING:`` block of worker/__init__."""
    tree = ast.parse(INIT.read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {alias.asname or alias.name: (node.module or "", alias.name)
            for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}


def test_every_public_name_resolves() -> None:
    missing = [name for name in worker.__all__ if getattr(worker, name, None) is None]
    assert missing == []
    assert sorted(worker.__all__) == sorted(set(worker.__all__))


def test_the_lazy_table_the_type_checking_block_and_all_agree() -> None:
    lazy = dict(worker._LAZY)
    assert lazy.pop("app") == lazy.pop("celery") == ("worker.node.app", "app")
    assert set(lazy) == set(worker.__all__)
    typed = type_checking_imports()
    typed.pop("Celery")
    assert typed == lazy


def test_unknown_names_are_attribute_errors() -> None:
    assert not hasattr(worker, "NoSuchThing")
    assert "Job" in dir(worker)


def test_import_worker_imports_nothing_else() -> None:
    assert imported_modules("import worker", ("worker", "celery", "kombu", "pydantic")) == [
        "worker"]


def test_a_plugin_import_does_not_pull_in_celery() -> None:
    found = imported_modules("from worker import BasePlugin, Job, hook",
                             ("celery", "worker.client", "worker.node", "worker.sandbox"))
    assert found == []


def test_celery_dash_a_worker_finds_the_app() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from celery.app.utils import find_app; "
                               "app = find_app('worker'); print(app.main, type(app).__name__)"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == ["sandrun", "Celery"]
