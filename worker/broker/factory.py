"""Making a Sandrun Celery app, without creating the worker's module-level one.

Producers with explicit broker URLs import this, so importing them never starts
the embedded default broker; :mod:`worker.node.app` uses it for the app workers run.
"""

from __future__ import annotations

from celery import Celery

from worker.broker.embedded import ensure_broker_configured
from worker.broker.resultstore import BACKENDS


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
    return celery_app
