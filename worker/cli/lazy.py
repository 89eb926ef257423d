"""A click group whose commands are named ``"module:attribute"`` and imported only when
one is asked for.

``sandrun submit`` then imports ``worker.cli.jobs`` and nothing of the fleet,
operations or plugin commands; ``sandrun --help`` imports every command module
(click needs each command's short help), which is why those modules import
their heavy dependencies inside the commands, not at the top.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """A group of eagerly added commands plus ``lazy_commands``: name -> ``module:attr``."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, name: str) -> click.Command:
        ref = self.lazy_commands[name]
        module, _, attr = ref.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"lazy command {name!r} ({ref}) is a {type(command).__name__}, "
                            "not a click command")
        return command
