"""The ``sandrun`` command line.

Commands: ``submit``, ``status``, ``result``, ``logs``, ``cancel``, ``download``
(jobs); ``schedule`` (periodic jobs); ``worker``, ``beat``, ``workers``, ``dead``,
``broker``, ``demo``, ``environments`` (operations);
``plugins`` (introspection); ``auth`` (credentials).
Exit codes are the same everywhere: 0 success, 1 a job did not complete or a
plugin problem, 2 bad usage or configuration, 3 broker unreachable, 4 timed out
waiting.

A command's module is imported only when that command runs (or ``--help`` lists
it), and imports its own heavy dependencies inside the command: ``sandrun
--help`` and ``sandrun probe live`` import no Celery, ``sandrun submit`` no
sandbox; ``tests/worker/cli/test_imports.py`` holds that.

The top wing: may import every wing below it (client, node, plugin host, sandbox,
stores, broker) and the shared modules; nothing imports it.
"""

from __future__ import annotations

import atexit
import functools
import gc

import click

from worker.cli.contributed import ContributedGroup
from worker.logs import cancel_deferred_logging, defer_logging

#: The built-in commands: name -> ``module:attribute``, imported when asked for.
BUILTIN_COMMANDS = {
    "submit": "worker.cli.jobs:submit",
    "status": "worker.cli.jobs:status",
    "result": "worker.cli.jobs:result",
    "logs": "worker.cli.jobs:logs",
    "cancel": "worker.cli.jobs:cancel",
    "download": "worker.cli.jobs:download",
    "worker": "worker.cli.ops:worker_command",
    "flower": "worker.cli.ops:flower_command",
    "probe": "worker.cli.ops:probe",
    "broker": "worker.cli.ops:broker",
    "demo": "worker.cli.ops:demo",
    "plugins": "worker.cli.plugins:plugins",
    "workers": "worker.cli.workers:workers",
    "dead": "worker.cli.fleet:dead",
    "schedule": "worker.cli.schedules:schedule",
    "environments": "worker.cli.environments:environments",
}


@click.group(cls=ContributedGroup, lazy_commands=BUILTIN_COMMANDS)
@click.version_option(package_name="sandrun")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """Sandrun: run untrusted compute jobs on a plugin-driven Celery fleet."""
    defer_logging(log_level)  # structlog is imported only if something logs
    click.get_current_context().call_on_close(cancel_deferred_logging)
    _freeze_objects_at_exit()


@functools.cache
def _freeze_objects_at_exit() -> None:
    """Have ``gc.freeze()`` run when the process exits (after every other atexit handler).

    A command's objects live until the process ends anyway, and the interpreter's last
    garbage collections walk every object of every module imported (Celery, kombu,
    redis, pydantic): about a fifth of ``sandrun submit --wait`` (benchmarks/cli.py).
    Frozen objects are skipped by those collections; reference counting still frees
    the others, and the other atexit handlers have run before."""
    atexit.register(gc.freeze)
