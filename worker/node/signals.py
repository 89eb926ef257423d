"""The bridge between Celery's moments and plugin hooks.

This is the only module of :mod:`worker` that talks to ``celery.signals``.

* ``celeryd_init`` (main process, before anything else of the worker): load the
  plugins there, so a logging plugin configures logging before Celery's first
  output; Celery is then kept from replacing that configuration. Celery's per-task
  lines lose their return value (a job's output) whoever configures logging.
* :class:`StartupChecks`, a worker bootstep, runs in the main process before any
  pool process starts: it refuses settings that would lose or duplicate jobs
  (a visibility timeout shorter than the longest job) and broken plugin sets,
  loads the plugins in the main process, dispatches ``on_worker_start`` (which
  may refuse the start) and advertises the worker.
* :class:`~worker.node.health.HealthFiles`, a consumer bootstep: heartbeat and readiness
  files for orchestrators.
* ``worker_process_init`` (each prefork pool process): build the process runtime,
  which loads the plugins and calls their ``on_init``.
* ``worker_process_shutdown`` (pool process): ``on_destroy`` for every plugin.
* ``worker_shutdown`` (main process): ``on_worker_stop``, withdraw the worker,
  ``on_destroy``.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import bootsteps
from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from worker import logs
from worker.broker.urls import is_redis
from worker.models import WorkerInfo
from worker.node import runtime
from worker.plugin.context import WorkerContext
from worker.settings import check_visibility_timeout
from worker.stores import registry

log = structlog.get_logger("sandrun.worker")


class StartupChecks(bootsteps.Step):
    """Fail fast, in the worker's main process, on settings that would lose jobs."""

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        conf = parent.app.conf
        if is_redis(str(conf.broker_url)):
            check_visibility_timeout(int(conf.broker_transport_options["visibility_timeout"]))
        rt = runtime.start()
        info = WorkerInfo(hostname=str(parent.hostname), pid=os.getpid(),
                          queues=sorted(parent.app.amqp.queues.consume_from or {}),
                          concurrency=parent.concurrency,
                          pool=getattr(parent.pool_cls, "__module__", None))
        info = rt.manager.on_worker_start(info, WorkerContext(hostname=info.hostname, pid=info.pid))
        rt.worker = info
        if rt.redis is not None:
            registry.register(rt.redis, info)
        log.info("worker_starting", queues=info.queues, concurrency=info.concurrency,
                 gpus=[f"{g.index}:{g.type}" for g in rt.gpus], isolation=rt.isolation,
                 **info.extra)
        for note in rt.sandbox_notes:
            log.warning("sandbox_layer_missing", note=note)




def _keep_sandrun_logging(**_: Any) -> None:
    """Connected only when a plugin configured logging: Celery then skips its own setup."""


@celeryd_init.connect
def _worker_initialising(**_: Any) -> None:
    logs.keep_results_out_of_logs()
    runtime.start()
    if logs.plugin_configured():
        setup_logging.connect(_keep_sandrun_logging)


@worker_process_init.connect
def _process_started(**_: Any) -> None:
    runtime.start()


@worker_process_shutdown.connect
def _process_stopping(**_: Any) -> None:
    runtime.stop()


@worker_shutdown.connect
def _worker_stopping(**_: Any) -> None:
    rt = runtime.active()
    if rt is not None and rt.worker is not None:
        rt.manager.on_worker_stop(rt.worker, WorkerContext(hostname=rt.worker.hostname,
                                                           pid=os.getpid()))
        if rt.redis is not None:
            registry.unregister(rt.redis, rt.worker.hostname)
    runtime.stop()
