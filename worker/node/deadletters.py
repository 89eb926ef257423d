"""Dead letters from RabbitMQ into the dead-letter store: :class:`BrokerDeadLetters`.

On RabbitMQ, a job queue hands a message to the ``sandrun.dead`` exchange when the
broker gives up on it: a quorum queue's ``x-delivery-limit`` (a job that keeps
killing its worker, counted by the broker even while Redis is down) or a reject
without requeue. The durable quorum queue ``sandrun.dead`` keeps such messages
until a worker's consumer bootstep stores each as a
:class:`~worker.stores.deadletter.DeadLetter` (source ``rabbitmq``, the broker's
reason, the job) and only then acknowledges it, so ``sandrun dead list|show|replay``
sees them like every other dead letter. While the store cannot be written the
message goes back to the queue after a one-second pause, and nothing is lost.

Everything in the message is a broker writer's: only known header fields are read,
sizes are capped, and an undecodable body is kept as the start of its text.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import structlog
from celery import bootsteps
from kombu import Consumer

from worker.broker.amqp import dead_letter_queue, uses_amqp
from worker.node import runtime
from worker.protocol import RUN_JOB
from worker.stores.deadletter import DeadLetter

RAW_LIMIT = 64 * 1024
RETRY_PAUSE = 1.0
log = structlog.get_logger("sandrun.deadletters")


def _reason(headers: dict[str, Any]) -> str:
    """Why the broker dead-lettered it, from ``x-first-death-*`` / ``x-death``."""
    why = str(headers.get("x-first-death-reason") or "")[:64]
    queue = str(headers.get("x-first-death-queue") or "")[:255]
    if not why:
        deaths = headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            first = deaths[0]
            why, queue = str(first.get("reason", ""))[:64], str(first.get("queue", ""))[:255]
    if why == "delivery_limit":
        return (f"RabbitMQ stopped it: delivered more times than the delivery limit of queue "
                f"{queue!r} (its worker kept dying); replay it once the cause is fixed")
    return f"RabbitMQ dead-lettered it from queue {queue!r} ({why or 'unknown reason'})"


def letter_from_message(body: bytes, headers: dict[str, Any], content_type: str | None
                        ) -> DeadLetter:
    """The dead letter of one dead-lettered task message (never raises on its content)."""
    task = str(headers.get("task") or "?")[:255]
    letter_id = str(headers.get("id") or f"message-{uuid.uuid4().hex}")[:255]
    letter = DeadLetter(id=letter_id, task=task, reason=_reason(headers), source="rabbitmq",
                        content_type=content_type)
    try:
        decoded = json.loads(body[:RAW_LIMIT * 16])
        args, kwargs = decoded[0], decoded[1]
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("not a task body")
    except (ValueError, TypeError, IndexError, KeyError):
        letter.raw = body[:RAW_LIMIT].decode("utf-8", errors="replace")
        return letter
    if task == RUN_JOB and args and isinstance(args[0], dict):
        letter.job = args[0]
    else:
        letter.task_args, letter.task_kwargs = args, kwargs
    return letter


class BrokerDeadLetters(bootsteps.ConsumerStep):
    """A consumer of ``sandrun.dead`` in every worker on RabbitMQ (none elsewhere)."""

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        self.enabled = uses_amqp(parent.app.conf)

    def start(self, c: Any) -> None:
        if self.enabled:  # no channel of its own on other brokers
            super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        channel.basic_qos(0, 16, False)
        return [Consumer(channel, queues=[dead_letter_queue()], on_message=self.on_message,
                         accept=["json"])]

    def on_message(self, message: Any) -> None:
        """Store the letter, then acknowledge; requeue after a pause when storing fails."""
        headers = dict(message.headers or {})
        letter = letter_from_message(message.body if isinstance(message.body, bytes)
                                     else str(message.body).encode(), headers,
                                     message.content_type)
        try:
            store = runtime.current().manager.dead_letters
            if store is None:
                raise RuntimeError("this worker has no dead-letter store")
            store.add(letter)
        except Exception as exc:  # keep it in the broker and try again
            log.error("dead_letter_failed", message_id=letter.id, error=repr(exc))
            time.sleep(RETRY_PAUSE)
            message.requeue()
            return
        log.error("message_dead_lettered", message_id=letter.id, reason=letter.reason,
                  source=letter.source)
        message.ack()
