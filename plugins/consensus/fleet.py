"""Where the ``consensus`` plugin stores a job's final result and how it stops replicas:
the worker's Celery app by default, a stand-in in unit tests."""

from __future__ import annotations

import threading
from typing import Protocol

from worker import JobResult


class Fleet(Protocol):
    """Where the final result goes and how replicas are stopped (Celery's, by default)."""

    def store_final(self, result: JobResult) -> None:
        """Store ``result`` as the job's final result, under its id."""

    def cancel(self, task_ids: list[str], running: list[str]) -> None:
        """Stop these replicas: none of ``task_ids`` may start any more, and those of
        ``running`` (they began on some node) are terminated."""


class CeleryFleet:
    """The worker's Celery app: its result backend and its remote control.

    :meth:`cancel` revokes every replica at once, so a queued or re-queued one is
    discarded where it arrives, and terminates the running ones ``grace`` seconds later
    (from a timer thread): terminating one kills the pool process that runs it, which
    its worker then has to start again (seconds, on a small host), while a replica of a
    short job is usually done within that grace anyway (terminating a task that has
    finished does nothing)."""

    def __init__(self, grace: float = 1.0) -> None:
        self.grace = grace

    def store_final(self, result: JobResult) -> None:
        from worker import app

        app.backend.store_result(result.id, result.model_dump(mode="json"), "SUCCESS")

    def cancel(self, task_ids: list[str], running: list[str]) -> None:
        from worker import app

        app.control.revoke(task_ids)
        if running:
            timer = threading.Timer(self.grace, app.control.revoke, (running,),
                                    {"terminate": True, "signal": "SIGTERM"})
            timer.daemon = True
            timer.start()
