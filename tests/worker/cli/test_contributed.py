"""Plugins contribute sandrun commands through the sandrun.commands entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import click
import pytest
from click.testing import CliRunner

from worker.cli import contributed, main

NOT_A_COMMAND = 42


@click.command()
def hello() -> None:
    """Say hello."""
    click.echo("hello from a plugin")


def use(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    points = {name: EntryPoint(name, value, contributed.GROUP) for name, value in values.items()}
    monkeypatch.setattr(contributed, "_entry_points", lambda: points)


def test_the_built_in_plugins_contribute_auth_and_beat() -> None:
    names = set(contributed._entry_points())
    assert {"auth", "beat"} <= names
    out = CliRunner().invoke(main, ["--help"]).output
    assert "auth" in out and "beat" in out


def test_a_contributed_command_is_listed_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, hello=f"{__name__}:hello")
    runner = CliRunner()
    assert "Say hello." in runner.invoke(main, ["--help"]).output
    assert runner.invoke(main, ["hello"]).output == "hello from a plugin\n"


@pytest.mark.parametrize(("value", "says"), [
    ("no_such_module_xyz:cmd", "does not import: ModuleNotFoundError"),
    (f"{__name__}:NOT_A_COMMAND", "is a int, not a click command"),
])
def test_a_broken_entry_point_is_named_and_the_rest_still_work(
        monkeypatch: pytest.MonkeyPatch, value: str, says: str) -> None:
    use(monkeypatch, broken=value)
    runner = CliRunner()
    result = runner.invoke(main, ["broken"])
    assert result.exit_code == 2
    assert "entry point 'broken'" in result.output and says in result.output
    assert runner.invoke(main, ["--help"]).exit_code == 0
    assert runner.invoke(main, ["probe", "--help"]).exit_code == 0


def test_a_contributed_command_may_not_replace_a_built_in(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, submit=f"{__name__}:hello")
    result = CliRunner().invoke(main, ["submit"])
    assert result.exit_code == 2 and "clashes with the built-in command" in result.output
