"""Commands plugins contribute to ``sandrun``, through the entry-point group
``sandrun.commands`` (``name = "package.module:click_command"``).

The host knows no particular plugin: ``sandrun auth`` comes from the auth plugin,
``sandrun beat`` from the scheduling plugin, and a third party adds its own the
same way. An entry point is imported only when its command is asked for (or
listed by ``--help``). One that does not import, is not a click command, or
clashes with a built-in command is reported by name with how to fix it; the other
commands keep working.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points

import click

from worker.cli.common import fail
from worker.cli.lazy import LazyGroup
from worker.errors import ConfigurationError

GROUP = "sandrun.commands"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    """The group's entry points, read once per process: each read scans the metadata of
    every installed distribution, and ``--help`` asks once per command."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _broken(name: str, why: str) -> click.Command:
    """A stand-in that says what is wrong with the entry point when it is run."""

    def report() -> None:
        fail(ConfigurationError(why))

    return click.Command(name, callback=report, help=f"(broken: {why})")


def load_command(ep: EntryPoint) -> click.Command:
    """The click command behind ``ep``, or a stand-in that explains why there is none."""
    where = f"entry point {ep.name!r} ({ep.value}) in group {GROUP}"
    try:
        command = ep.load()
    except Exception as exc:
        return _broken(ep.name, f"{where} does not import: {type(exc).__name__}: {exc}; "
                                "reinstall or fix the package that declares it")
    if not isinstance(command, click.Command):
        return _broken(ep.name, f"{where} is a {type(command).__name__}, not a click command")
    return command


class ContributedGroup(LazyGroup):
    """The ``sandrun`` group: built-in commands (imported when asked for) plus the
    contributed ones."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = super().get_command(ctx, cmd_name)
        contributed = _entry_points().get(cmd_name)
        if builtin is not None and contributed is not None:
            return _broken(cmd_name, f"entry point {cmd_name!r} ({contributed.value}) in group "
                                     f"{GROUP} clashes with the built-in command; rename it")
        if builtin is not None:
            return builtin
        return None if contributed is None else load_command(contributed)
