"""``sandrun beat``: release held and fair jobs by dispatching ``on_beat`` on a timer.

The scheduling plugin declares the ``on_beat`` hook and contributes this command
to ``sandrun`` through the entry-point group ``sandrun.commands``
(``beat = "plugins.scheduling.cli:beat_command"``), so the host knows nothing of
either. Any configured plugin that implements ``on_beat`` is called.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from plugins.scheduling.hooks import BEAT_HOOK
from worker import ConfigurationError, SandrunError, cli_fail

if TYPE_CHECKING:
    from worker import PluginManager, ScheduleRunner


def _beat_manager() -> PluginManager:
    """The configured plugins, loaded as in a worker (Redis storage); one must implement
    the beat hook."""
    from worker import (
        PluginManager,
        RedisStorageBackend,
        ensure_broker_configured,
        load_settings,
        parse_plugin_permissions,
        parse_plugin_specs,
        redis_client,
    )

    ensure_broker_configured()
    settings = load_settings()
    url = os.environ["SANDRUN_BROKER_URL"]
    # plugin storage lives in the broker's Redis, or on RabbitMQ in the result backend's
    client = redis_client(url) or redis_client(os.environ.get("SANDRUN_RESULT_BACKEND") or "")
    storage = None if client is None else RedisStorageBackend(client)
    manager = PluginManager(storage=storage, hook_timeout=settings.hook_timeout,
                            permissions=parse_plugin_permissions(settings.plugin_permissions))
    manager.load_all(parse_plugin_specs(settings.plugins))
    if BEAT_HOOK not in manager.hook_plan():
        manager.close()
        raise ConfigurationError(
            "sandrun beat has nothing to do: no configured plugin implements on_beat. Add "
            '{"name": "scheduling"} to SANDRUN_PLUGINS (the same list the workers use)')
    return manager


@click.command("beat")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between two runs of the plugins' on_beat.")
@click.option("--once", is_flag=True, help="Run on_beat once and exit.")
def beat_command(interval: float, once: bool) -> None:
    """Release scheduled jobs: every INTERVAL seconds, dispatch on_beat to the configured
    plugins (the scheduling plugin's process_queue publishes held jobs that are due and
    moves fair queues) and submit the periodic jobs that are due (``sandrun schedule``),
    through the same plugins, so they are signed like any job. Runs no jobs and holds no
    worker slot; several beats may run at once (each job and each due run is claimed by
    one), so run one per host for redundancy."""
    from worker import ScheduleRunner, WorkerContext, load_settings

    try:
        manager = _beat_manager()
    except SandrunError as exc:
        cli_fail(exc)
    try:
        periodic: ScheduleRunner | None = ScheduleRunner.for_beat(
            manager, load_settings(), os.environ["SANDRUN_BROKER_URL"])
    except ConfigurationError as exc:  # held jobs still need releasing: say so, go on
        click.echo(f"sandrun beat: periodic jobs are off: {exc}", err=True)
        periodic = None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    context = WorkerContext(hostname=f"beat@{socket.gethostname()}", pid=os.getpid())
    click.echo(f"sandrun beat: on_beat every {interval:g}s", err=True)
    try:
        while not stop.is_set():
            manager.execute_hook(BEAT_HOOK, datetime.now(UTC), context)  # failures are logged
            if periodic is not None:
                periodic.tick()  # failures are logged
            if once:
                break
            stop.wait(interval)
    finally:
        if periodic is not None:
            periodic.close()
        manager.close()

