"""Each ``sandrun`` command imports only what it needs: ``import worker.cli`` and
``--help`` no Celery worker, sandbox, broker client or models, the probes no Celery.

Each check runs in a fresh interpreter (this one has imported everything) and
compares module names, never times.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from worker.cli import BUILTIN_COMMANDS, main
from worker.cli.lazy import LazyGroup

RUN_SANDRUN = """
import sys
from worker.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
"""


def modules_after(code: str, prefixes: tuple[str, ...], *args: str,
                  env: dict[str, str] | None = None) -> list[str]:
    """The modules starting with one of ``prefixes`` imported once ``code`` has run."""
    report = f"\nprint(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    proc = subprocess.run([sys.executable, "-c", code + report, *args], capture_output=True,
                          text=True, timeout=60, check=True, env=env)
    return list(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


def test_import_worker_cli_pulls_in_no_celery_worker_and_no_sandbox() -> None:
    code = "import worker.cli, sys"
    assert modules_after(code, ("celery.worker", "worker.sandbox")) == []
    assert modules_after(code, ("celery", "kombu", "redis", "pydantic", "rich")) == []


def test_help_imports_no_celery_models_or_plugins() -> None:
    found = modules_after(RUN_SANDRUN, ("celery", "kombu", "redis", "pydantic", "rich",
                                        "structlog", "worker.models", "worker.client",
                                        "plugins.auth.plugin", "plugins.scheduling.plugin"),
                          "--help")
    assert found == []


@pytest.mark.parametrize("args", [("probe", "live"), ("probe", "ready"), ("plugins", "list")])
def test_commands_that_do_not_talk_to_the_broker_import_no_celery(
        args: tuple[str, ...], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
    env["SANDRUN_STATE_DIR"] = str(tmp_path)
    assert modules_after(RUN_SANDRUN, ("celery", "worker.sandbox", "worker.client"), *args,
                         env=env) == []


def test_submit_imports_the_client_but_no_sandbox() -> None:
    found = modules_after(RUN_SANDRUN, ("worker.sandbox", "worker.node", "celery.worker",
                                        "worker.cli.fleet", "worker.cli.ops"),
                          "submit", "--help")
    assert found == []


def test_every_built_in_command_loads_under_its_name() -> None:
    ctx = click.Context(main)
    for name in BUILTIN_COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert set(BUILTIN_COMMANDS) <= set(main.list_commands(ctx))


def test_a_lazy_reference_that_is_not_a_command_says_so() -> None:
    group = LazyGroup(lazy_commands={"oops": "worker.cli:BUILTIN_COMMANDS"})
    with pytest.raises(TypeError, match=r"'oops' \(worker.cli:BUILTIN_COMMANDS\) is a dict"):
        group.get_command(click.Context(group), "oops")


@pytest.mark.parametrize("package", ["plugins.auth", "plugins.scheduling"])
def test_plugin_packages_still_export_their_names(package: str) -> None:
    module = importlib.import_module(package)
    assert all(getattr(module, name) is not None for name in module.__all__)
    with pytest.raises(AttributeError):
        _ = module.NoSuchName
