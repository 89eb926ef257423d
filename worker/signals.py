"""The bridge between Celery's moments and plugin lifecycle hooks.

This is the only module of :mod:`worker` that talks to ``celery.signals``.

* ``worker_process_init`` (each prefork pool process): build the process runtime,
  which loads the plugins and calls their ``on_init``.
* ``worker_process_shutdown`` / ``worker_shutdown`` (pool process / solo worker):
  ``on_destroy`` for every plugin.
* A worker bootstep, :class:`StartupChecks`, runs in the main process before any
  pool process starts and refuses to start a worker whose settings would lose or
  duplicate jobs (a visibility timeout shorter than the longest job) or whose
  plugin set is broken.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from worker import runtime
from worker.app import app
from worker.loader import parse_plugin_specs
from worker.manager import PluginManager
from worker.settings import check_visibility_timeout, load_settings


class StartupChecks(bootsteps.Step):
    """Fail fast, in the worker's main process, on settings that would lose jobs."""

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        settings = load_settings()
        conf = parent.app.conf
        if str(conf.broker_url).startswith(("redis", "rediss", "redis+socket")):
            check_visibility_timeout(int(conf.broker_transport_options["visibility_timeout"]))
        PluginManager().validate(parse_plugin_specs(settings.plugins))


app.steps["worker"].add(StartupChecks)


@worker_process_init.connect
def _process_started(**_: Any) -> None:
    runtime.start()


@worker_process_shutdown.connect
def _process_stopping(**_: Any) -> None:
    runtime.stop()


@worker_shutdown.connect
def _worker_stopping(**_: Any) -> None:
    runtime.stop()
