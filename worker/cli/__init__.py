"""The ``sandrun`` command line.

Commands: ``submit``, ``status``, ``result``, ``logs``, ``cancel``, ``download``
(jobs); ``worker``, ``beat``, ``workers``, ``dead``, ``broker``, ``demo`` (operations);
``plugins`` (introspection); ``auth`` (credentials).
Exit codes are the same everywhere: 0 success, 1 a job did not complete or a
plugin problem, 2 bad usage or configuration, 3 broker unreachable, 4 timed out
waiting.

The top wing: may import every wing below it (client, node, plugin host, sandbox,
stores, broker) and the shared modules; nothing imports it.
"""

from __future__ import annotations

import click

from worker.cli.contributed import ContributedGroup
from worker.cli.fleet import dead, workers
from worker.cli.jobs import cancel, download, logs, result, status, submit
from worker.cli.ops import broker, demo, flower_command, probe, worker_command
from worker.cli.plugins import plugins
from worker.logs import configure_logging


@click.group(cls=ContributedGroup)
@click.version_option(package_name="sandrun")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """Sandrun: run untrusted compute jobs on a plugin-driven Celery fleet."""
    configure_logging(log_level)


for command in (submit, status, result, logs, cancel, download, worker_command, broker, demo,
                plugins, workers, dead, probe, flower_command):
    main.add_command(command)
