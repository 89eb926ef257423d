"""Wire names the producer and the worker must agree on, in one small module both import.

The task name, the header a producer stamps with its publish time, which queue
a job is published to, and :class:`Publication`, the message as it is sent. It
imports nothing heavier than the models, so a producer gets these without
loading the node or the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.models import Job

#: The Celery task that runs one Job in the sandbox.
RUN_JOB = "sandrun.run_job"
#: Message header: the producer's publish time (Unix seconds, a decimal string).
SUBMITTED_HEADER = "sandrun_submitted_at"


def job_queue(job: Job, default_queue: str) -> str:
    """The queue a job is published to: its own or the default, with ``.gpu`` (and
    ``.gpu.<type>``) for jobs that require a GPU."""
    base = job.queue or default_queue
    if not job.needs_gpu:
        return base
    assert job.gpu is not None
    return f"{base}.gpu.{job.gpu.type}" if job.gpu.type else f"{base}.gpu"


@dataclass(slots=True)
class Publication:
    """The Celery message a client is about to publish, after every ``on_submit`` hook.

    The client hands it to ``on_publish`` (hooks that must see the message exactly as
    sent: a signer needs the body, queue and ETA; a scheduler may hold it) and sends
    what the chain returns, unless a hook raised
    :class:`~worker.errors.PublicationHeld` because it took the message over."""

    task: str
    task_id: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: datetime | None = None
    priority: int | None = None
    headers: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``Celery.send_task`` for this message."""
        options: dict[str, Any] = {"task_id": self.task_id, "queue": self.queue,
                                   "headers": dict(self.headers), "retry": False}
        if self.eta is not None:
            options["eta"] = self.eta
        if self.priority is not None:
            options["priority"] = self.priority
        return options
