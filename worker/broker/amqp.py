"""RabbitMQ job queues: how Sandrun declares them, and how deep they are.

With ``SANDRUN_BROKER_URL=amqp://...`` every job queue (the default queue, a job's
own ``queue``, the ``.gpu`` queues) is declared by :class:`SandrunQueues`, the
same way by producers and workers, in one of two layouts chosen with
``SANDRUN_AMQP_QUEUES`` (the app setting ``sandrun_amqp_queues``, :func:`amqp_settings`):

* ``quorum`` (default): durable quorum queues (Raft-replicated on a cluster),
  with ``x-delivery-limit`` (``SANDRUN_AMQP_DELIVERY_LIMIT``, default 5) and
  the dead-letter exchange ``sandrun.dead`` with at-least-once dead-lettering,
  so a job that keeps killing its worker is stopped by the broker even when
  Redis cannot count its deliveries. RabbitMQ 3.10 quorum queues have no
  message priorities: each queue is served in publish order, and the
  ``priority-first`` strategy is not honoured (the scheduling plugin warns).
  Countdowns and ETAs (retries, deferrals, near scheduled jobs) go through
  Celery's native delayed delivery (``celery_delayed_*`` exchanges), never held
  by a worker.
* ``priority``: durable classic queues with ``x-max-priority`` 10, so
  ``Job.priority`` 9 is served first, as on Redis; the same dead-letter exchange
  for rejected messages, but no delivery limit (Sandrun's own delivery count in
  Redis, ``SANDRUN_MAX_ATTEMPTS``, is then the only one). Not replicated.

Both keep messages persistent, and every publish waits for the broker's
confirm (``confirm_publish``). A queue's arguments cannot change
once declared: switching layout or delivery limit needs the queues deleted first
(docs/operations.md says how).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import amqp.exceptions
from celery.app.amqp import AMQP, Queues
from kombu import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from worker.broker.redistransport import SandrunConnection
from worker.broker.urls import is_amqp
from worker.errors import ConfigurationError

#: The exchange and queue that dead-lettered job messages go to (drained by workers into
#: the dead-letter store, :mod:`worker.node.deadletters`).
DEAD_EXCHANGE = "sandrun.dead"
DEAD_QUEUE = "sandrun.dead"
LAYOUTS = ("quorum", "priority")
#: Celery's ``broker_heartbeat`` on RabbitMQ, set here rather than left to Celery's 120 s:
#: a consumer whose host is partitioned keeps a half-open TCP connection that neither
#: end sees fail until heartbeats go missing. py-amqp gives up after two missed beats,
#: the broker after two of its own, so at 30 s the worker reconnects, and RabbitMQ hands
#: the cut consumer's unacked jobs to others, within about a minute (not four); those
#: copies wait on the jobs' running leases (worker.stores.leases) instead of running
#: beside the original. Only the worker's consumer connection beats (Celery opens
#: producers' connections without heartbeats).
HEARTBEAT_SECONDS = 30
MAX_PRIORITY = 10


def amqp_settings(environ: Mapping[str, str], visibility_timeout: int) -> dict[str, Any]:
    """Celery settings of an app whose broker is RabbitMQ, from ``SANDRUN_*`` variables.

    Every publish waits for the broker's confirm (``confirm_publish``), so a message the
    client, the beat or a retry sent is on disk (on a quorum of nodes) before the call
    returns; messages are persistent (Celery's default). Exchanges are topic exchanges,
    which native delayed delivery needs. ``visibility_timeout`` is kept in the transport
    options only because producers read it as the longest ETA they accept: RabbitMQ has
    none (its ``consumer_timeout``, a server setting, must exceed the longest job)."""
    layout = environ.get("SANDRUN_AMQP_QUEUES", "quorum")
    limit = environ.get("SANDRUN_AMQP_DELIVERY_LIMIT", "5")
    if layout not in LAYOUTS or not limit.isdigit() or int(limit) < 1:
        raise ConfigurationError(
            f"SANDRUN_AMQP_QUEUES={layout!r} and SANDRUN_AMQP_DELIVERY_LIMIT={limit!r}: the "
            f"queues are one of {', '.join(LAYOUTS)} and the limit a whole number of at "
            "least 1 (the deliveries after which RabbitMQ dead-letters a job)")
    return {"broker_transport_options": {"visibility_timeout": visibility_timeout,
                                         "confirm_publish": True},
            "broker_heartbeat": HEARTBEAT_SECONDS,
            "task_default_exchange_type": "topic",
            "task_create_missing_queue_exchange_type": "topic",
            "sandrun_amqp_queues": layout,
            "sandrun_amqp_delivery_limit": int(limit)}


def dead_letter_queue() -> Queue:
    """The durable quorum queue holding dead-lettered messages until a worker stores them."""
    return Queue(DEAD_QUEUE, Exchange(DEAD_EXCHANGE, "fanout", durable=True), routing_key="#",
                 queue_arguments={"x-queue-type": "quorum"})


def queue_arguments(layout: str, delivery_limit: int) -> dict[str, Any]:
    """The ``x-`` arguments of a job queue in ``layout`` (module docstring)."""
    if layout == "priority":
        return {"x-max-priority": MAX_PRIORITY, "x-dead-letter-exchange": DEAD_EXCHANGE}
    if layout != "quorum":
        raise ValueError(f"SANDRUN_AMQP_QUEUES is {layout!r}; use one of {', '.join(LAYOUTS)}")
    return {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def job_queue_entity(name: str, conf: Any) -> Queue:
    """The kombu Queue of job queue ``name``: a topic exchange of its own name (native
    delayed delivery routes through topic exchanges), bound with its name."""
    arguments = queue_arguments(str(conf.get("sandrun_amqp_queues", "quorum")),
                                int(conf.get("sandrun_amqp_delivery_limit", 5)))
    return Queue(name, Exchange(name, "topic", durable=True), routing_key=name,
                 durable=True, queue_arguments=arguments)


def uses_amqp(conf: Any) -> bool:
    """Whether the app's broker is RabbitMQ."""
    return is_amqp(str(conf.broker_url or ""))


class SandrunQueues(Queues):
    """Celery's queue table, declaring job queues Sandrun's way on RabbitMQ."""

    conf: Any = None

    def new_missing(self, name: str) -> Queue:
        if self.conf is None or not uses_amqp(self.conf):
            return super().new_missing(name)
        return job_queue_entity(name, self.conf)


class SandrunAMQP(AMQP):
    """Celery's AMQP helper with :class:`SandrunQueues`; the default queue is declared as
    every other job queue. Its connections are :class:`SandrunConnection`, whose Redis
    transport builds one redis-py client per channel instead of one per acknowledgement
    (:mod:`worker.broker.redistransport`). Installed by
    :func:`~worker.broker.factory.make_app`."""

    queues_cls = SandrunQueues
    Connection = SandrunConnection

    def Queues(self, queues: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (Celery's name)
        conf = self.app.conf
        if uses_amqp(conf) and not queues and conf.task_default_queue:
            queues = [job_queue_entity(conf.task_default_queue, conf)]
        table: Any = super().Queues(queues, *args, **kwargs)
        table.conf = conf
        return table


def queue_depth(app: Any, name: str) -> int:
    """Messages ready in RabbitMQ queue ``name`` (0 when it does not exist yet), read with a
    passive declare on a channel of its own (a missing queue closes the channel)."""
    with app.connection_for_read() as connection:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=name, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return 0
        finally:
            if channel.is_open:
                channel.close()


def delays_natively(conf: Any) -> bool:
    """Whether countdowns and ETAs go through Celery's native delayed delivery: RabbitMQ
    with quorum job queues."""
    return uses_amqp(conf) and str(conf.get("sandrun_amqp_queues", "quorum")) == "quorum"


def delayed_countdown(conf: Any, countdown: float) -> float:
    """A countdown the broker can delay by: native delayed delivery counts whole seconds
    and refuses a positive countdown under 1 s, so one is rounded up there."""
    if countdown > 0 and delays_natively(conf):
        return float(math.ceil(countdown))
    return countdown


#: The prefix native delayed delivery puts before a delayed message's routing key.
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def redelivery_options(conf: Any, delivery_info: Mapping[str, Any] | None,
                       countdown: float) -> dict[str, Any]:
    """Options that publish the message of this delivery again ``countdown`` s from now.

    On native delayed delivery the queue is named explicitly: Celery would route a
    re-published message by the delivery's exchange and key, but its delayed path
    takes the routing key of the *default* queue then, and a job of any other queue
    would land in the default one. The queue is the delivery's routing key (job queues
    are bound by their name) without the delay prefix."""
    options: dict[str, Any] = {"countdown": delayed_countdown(conf, countdown)}
    if delays_natively(conf):
        key = delivered_queue(delivery_info)
        if key:
            options["queue"] = key
    return options


#: Headers RabbitMQ writes on a message it dead-letters (native delayed delivery moves a
#: message through its delay queues by dead-lettering) or counts the deliveries of
#: (quorum queues), which :func:`republished_headers` leaves out.
BROKER_HEADERS = frozenset({
    "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
    "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
    "x-delivery-count"})


def republished_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A delivery's headers for the copy of it a worker publishes again (a wait for the
    job's lease, a GPU re-route), without those the broker wrote.

    A copy that kept ``x-death`` would be dropped, silently, the second time it passed
    through the same delay queue: RabbitMQ takes it for a dead-letter cycle (Celery's
    own ``signature_from_request`` drops these headers for this reason; headers passed
    to it explicitly bypass that). The copy is a new message, so its delivery count
    starts anew too."""
    return {key: value for key, value in (headers or {}).items() if key not in BROKER_HEADERS}


def delivered_queue(delivery_info: Mapping[str, Any] | None) -> str | None:
    """The queue a delivery came from: its routing key (job queues are bound by their
    name), without the prefix Celery's native delayed delivery puts before it (a
    countdown's message arrives as ``0.0.….1.sandrun``)."""
    key = (delivery_info or {}).get("routing_key")
    if not isinstance(key, str):  # on Redis the message says; a broker writer may lie
        return None
    return _DELAY_PREFIX.sub("", key, 1) or None


def declare_job_queues(app: Any) -> None:
    """Declare every job queue the app knows (its default queue and those it consumes),
    so that binding them to the delay exchanges at worker start finds them all."""
    with app.connection_for_write() as connection:
        channel = connection.channel()
        try:
            for queue in app.amqp.queues.values():
                queue.bind(channel).declare()
        finally:
            channel.close()


def prepare_delayed_delivery(app: Any, queue: str) -> None:
    """Declare the native delayed-delivery exchanges and bind ``queue`` to them, once per
    app and queue, before a producer publishes a delayed message to it: a worker does so
    for its own queues at start, but a delayed message published before any worker of the
    queue ran would otherwise be dropped by the broker when it falls due."""
    if not delays_natively(app.conf):
        return
    done: set[str] = app.__dict__.setdefault("_sandrun_delayed_queues", set())
    if queue in done:
        return
    with app.connection_for_write() as connection:
        if not done:
            declare_native_delayed_delivery_exchanges_and_queues(
                connection, app.conf.broker_native_delayed_delivery_queue_type)
        bind_queue_to_native_delayed_delivery_exchange(connection, app.amqp.queues[queue])
    done.add(queue)
