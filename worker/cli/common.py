"""What every ``sandrun`` command shares: consoles, exit codes, error printing.

Every command module imports this one, and ``sandrun --help`` imports every
command module, so it imports nothing heavy: rich, the plugin loader and
pydantic are imported when a command first needs them.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn, TypeVar

from worker.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidJob,
    SandrunError,
    WaitTimeout,
)

if TYPE_CHECKING:
    from rich.console import Console

    from worker.plugin.loader import PluginSpec

T = TypeVar("T")

#: Exit codes, the same for every command.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_BROKER, EXIT_TIMEOUT = 0, 1, 2, 3, 4


@functools.cache
def console() -> Console:
    """The rich console on stdout, made when a command first prints a table or markup."""
    from rich.console import Console

    return Console()


@functools.cache
def err_console() -> Console:
    """The rich console on stderr, for ``error: ...`` lines."""
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def set_up_uncollected(set_up: Callable[[], T]) -> Iterator[T]:
    """``set_up()`` with garbage collection paused, then what it made kept out of every
    collection (``gc.freeze``) until the block ends.

    Importing Celery, kombu, redis and pydantic makes some 60,000 objects that live as
    long as the command; collecting while they are made finds no garbage and costs a
    tenth of ``sandrun submit --wait`` (benchmarks/cli.py). Collection is on for what
    the block then does, however long it runs, and the frozen objects are thawed at its
    end, so a command run in-process (``CliRunner``) leaves nothing uncollectable."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        made = set_up()
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()
    try:
        yield made
    finally:
        gc.unfreeze()


def configured_specs() -> list[PluginSpec]:
    """The plugins named by ``SANDRUN_PLUGINS``."""
    from worker.plugin.loader import parse_plugin_specs

    return parse_plugin_specs(os.environ.get("SANDRUN_PLUGINS"))


def exit_code(exc: SandrunError) -> int:
    """The exit code for an error: 2 usage/config, 3 broker, 4 timeout, 1 otherwise."""
    if isinstance(exc, ConfigurationError | InvalidJob):
        return EXIT_USAGE
    if isinstance(exc, BrokerUnavailable):
        return EXIT_BROKER
    if isinstance(exc, WaitTimeout):
        return EXIT_TIMEOUT
    return EXIT_JOB_FAILED


def invalid(exc: ValueError) -> SandrunError:
    """A builder's or model's ValueError as the error ``fail`` prints: pydantic's
    validation errors one ``field: rule`` per line (``InvalidJob``), without its links."""
    from pydantic import ValidationError

    from worker.errors import InvalidJob

    if isinstance(exc, SandrunError):
        return exc
    if isinstance(exc, ValidationError):
        return InvalidJob([(".".join(map(str, e["loc"])) or "job",
                            str(e["msg"]).removeprefix("Value error, "))
                           for e in exc.errors()])
    return SandrunError(str(exc))


def fail(exc: SandrunError) -> NoReturn:
    """Print ``error: ...`` on stderr and exit with the code that fits the error."""
    err_console().print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    sys.exit(exit_code(exc))
