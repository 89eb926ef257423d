"""Making a Sandrun Celery app, without creating the worker's module-level one.

Producers with explicit broker URLs import this, so importing them never starts
the embedded default broker; :mod:`worker.node.app` uses it for the app workers run.
"""

from __future__ import annotations

import os

from celery import Celery

from worker.broker.amqp import amqp_settings
from worker.broker.embedded import ensure_broker_configured
from worker.broker.resultstore import BACKENDS
from worker.broker.urls import celery_redis_settings, is_amqp, is_redis
from worker.errors import ConfigurationError


def make_app(broker_url: str | None = None, result_backend: str | None = None) -> Celery:
    """A Sandrun Celery app; explicit URLs override the environment's (and with none, the
    embedded default broker is started and exported)."""
    if not broker_url:
        ensure_broker_configured()
    # On RabbitMQ, job queues are declared by worker/broker/amqp.py (quorum or priority).
    celery_app = Celery("sandrun", task_cls="worker.node.taskbase:SandrunTask",
                        amqp="worker.broker.amqp:SandrunAMQP")
    celery_app.config_from_object("celeryconfig")
    # Redis results through GuardedRedisBackend: a stored SUCCESS is kept atomically, in
    # one round trip per stored state (worker/broker/resultstore.py).
    celery_app.loader.override_backends = {**celery_app.loader.override_backends, **BACKENDS}
    if broker_url:
        celery_app.conf.update(broker_url=broker_url,
                               result_backend=result_backend or broker_url)
    elif result_backend:
        celery_app.conf.update(result_backend=result_backend)
    # socket timeouts, health checks and TCP keepalive on every Redis connection
    celery_app.conf.update(celery_redis_settings(
        str(celery_app.conf.broker_url or ""), str(celery_app.conf.result_backend or ""),
        dict(celery_app.conf.broker_transport_options or {})))
    if is_amqp(str(celery_app.conf.broker_url or "")):
        _check_result_backend(str(celery_app.conf.result_backend or ""))
        visibility = int(celery_app.conf.broker_transport_options.get("visibility_timeout", 7200))
        celery_app.conf.update(amqp_settings(os.environ, visibility))
    return celery_app


def _check_result_backend(url: str) -> None:
    """RabbitMQ carries jobs only: results, dead letters, attempts, plugin storage and the
    scheduling plugin's held jobs live in Redis, so an amqp:// broker needs a Redis backend."""
    if not is_redis(url):
        raise ConfigurationError(
            f"the broker is RabbitMQ but the result backend is {url or 'not set'!r}: results, "
            "dead letters, attempts and plugin storage are kept in Redis. Set "
            "SANDRUN_RESULT_BACKEND=redis://host:6379/0 (or pass result_backend=...)")
