"""The worker's message consumer: messages it cannot run are dead-lettered, not only logged.

Celery logs and drops a message it cannot decode (invalid JSON, a content type
outside ``accept_content`` such as pickle), one for a task it does not know,
and one whose headers are not a task's. Each of those is a job somebody sent,
so before Celery discards it this consumer keeps it in the dead-letter store
(source ``broker``) with the reason, the first 64 KiB of its body and the job
context its headers carry (correlation id, tenant, baggage, when valid), and logs
``message_dead_lettered``. The worker then goes on with the next message.

It also applies celeryconfig's ``sandrun_worker_gossip`` and ``sandrun_worker_mingle``
(Celery has only the ``--without-gossip``/``--without-mingle`` flags, which still work):
a switch that is off turns the bootstep off whatever the command line says.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery.worker.consumer import Consumer

from worker.node import runtime
from worker.protocol import context_from_headers
from worker.stores.deadletter import DeadLetter

RAW_LIMIT = 64 * 1024
log = structlog.get_logger("sandrun.consumer")


def bury(message: Any, reason: str) -> None:
    """Dead-letter a raw broker message that will not run (never raises)."""
    headers = getattr(message, "headers", None) or {}
    body = getattr(message, "body", b"") or b""
    raw = body[:RAW_LIMIT].decode("utf-8", errors="replace") if isinstance(body, bytes) \
        else str(body)[:RAW_LIMIT]
    letter_id = str(headers.get("id") or f"message-{uuid.uuid4().hex}")
    travelled, _ = context_from_headers(headers if isinstance(headers, dict) else {})
    try:
        store = runtime.current().manager.dead_letters
        if store is not None:
            store.add(DeadLetter(id=letter_id, task=str(headers.get("task") or "?"),
                                 reason=reason, source="broker", raw=raw,
                                 content_type=getattr(message, "content_type", None),
                                 context=travelled if travelled.log_fields() else None))
    except Exception as exc:  # the store being down must not stop the consumer
        log.error("dead_letter_failed", message_id=letter_id, error=repr(exc))
    log.error("message_dead_lettered", message_id=letter_id, reason=reason)


class SandrunConsumer(Consumer):
    """Celery's consumer, dead-lettering the messages it would only log and drop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        conf = kwargs["app"].conf  # the worker passes every argument but the first by name
        options = dict(kwargs.get("worker_options") or {})
        if not conf.get("sandrun_worker_gossip", False):
            options["without_gossip"] = True
        if not conf.get("sandrun_worker_mingle", False):
            options["without_mingle"] = True
        super().__init__(*args, **{**kwargs, "worker_options": options})

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        bury(message, f"cannot decode the message ({type(exc).__name__}: {exc}); only "
                      "JSON task messages are accepted")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        bury(message, "not a task message (its headers name no task)")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (getattr(message, "headers", None) or {}).get("task")
        bury(message, f"unknown task {name!r}: no worker registers it")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        bury(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)
