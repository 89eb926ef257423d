"""The bridge between Celery's moments and plugin hooks.

This is the only module of :mod:`worker` that talks to ``celery.signals``.

* ``celeryd_init`` (main process, before anything else of the worker): load the
  plugins there, so a logging plugin configures logging before Celery's first
  output; Celery is then kept from replacing that configuration.
* ``after_setup_logger`` (main process; sent only when Celery set logging up itself,
  so no plugin did): structlog events go through Celery's logging from then on.
* :class:`StartupChecks`, a worker bootstep, runs in the main process before any
  pool process starts: it refuses settings that would lose or duplicate jobs
  (a visibility timeout shorter than the longest job) and broken plugin sets,
  declares the job queues on RabbitMQ (before Celery binds them to its delays),
  loads the plugins in the main process, dispatches ``on_worker_start`` (which
  may refuse the start) and advertises the worker.
* :class:`~worker.node.health.HealthFiles`, a consumer bootstep: heartbeat and readiness
  files for orchestrators.
* ``worker_process_init`` (each prefork pool process): build the process runtime,
  which loads the plugins and calls their ``on_init``.
* ``task_postrun`` (pool process, after a job's result is stored): pre-start the next
  job's sandbox (:mod:`worker.sandbox.warm`), so it is off the job's round trip.
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
    after_setup_logger,
    celeryd_init,
    setup_logging,
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from worker import logs
from worker.broker.amqp import declare_job_queues, delays_natively
from worker.broker.urls import is_redis
from worker.models import WorkerInfo
from worker.node import runtime
from worker.plugin.context import WorkerContext
from worker.protocol import RUN_JOB
from worker.sandbox.warmpool import prestart_pending
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
        elif delays_natively(conf):
            _declare_job_queues(parent.app)
        rt = runtime.start()
        info = WorkerInfo(hostname=str(parent.hostname), pid=os.getpid(),
                          queues=sorted(parent.app.amqp.queues.consume_from or {}),
                          concurrency=parent.concurrency,
                          pool=getattr(parent.pool_cls, "__module__", None),
                          gpus=[g.card for g in rt.gpus])
        info = rt.manager.on_worker_start(info, WorkerContext(hostname=info.hostname, pid=info.pid))
        rt.worker = info
        if rt.redis is not None:
            registry.register(rt.redis, info, rt.settings.registry_ttl)
        log.info("worker_starting", queues=info.queues, concurrency=info.concurrency,
                 gpus=[f"{g.index}:{g.type}" for g in rt.gpus], isolation=rt.isolation,
                 **info.extra)
        for note in rt.sandbox_notes:
            log.warning("sandbox_layer_missing", note=note)




def _declare_job_queues(app: Any) -> None:
    """RabbitMQ: declare the job queues before Celery binds them to its delay exchanges
    (a queue nobody declared yet would fail that, and delays with it). A broker that is
    not there yet is logged: Celery's own connection retry follows."""
    try:
        declare_job_queues(app)
    except Exception as exc:  # Celery reconnects and declares what it consumes itself
        log.warning("job_queues_not_declared", error=repr(exc))


def _keep_sandrun_logging(**_: Any) -> None:
    """Connected only when a plugin configured logging: Celery then skips its own setup."""


@celeryd_init.connect
def _worker_initialising(**_: Any) -> None:
    runtime.start()
    if logs.plugin_configured():
        setup_logging.connect(_keep_sandrun_logging)


@after_setup_logger.connect
def _celery_configured_logging(**_: Any) -> None:
    logs.route_to_stdlib()


@worker_process_init.connect
def _process_started(**_: Any) -> None:
    runtime.start()


@task_postrun.connect
def _job_stored(sender: Any = None, **_: Any) -> None:
    """After a job's result is stored: build the next job's sandbox (off its round trip)."""
    if getattr(sender, "name", None) == RUN_JOB:
        prestart_pending()


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
