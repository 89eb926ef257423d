"""Where the ``consensus`` plugin stores a job's final result and how it stops replicas:
the worker's Celery app by default, a stand-in in unit tests."""

from __future__ import annotations

from typing import Protocol

from worker import JobResult


class Fleet(Protocol):
    """Where the final result goes and how replicas are stopped (Celery's, by default)."""

    def store_final(self, result: JobResult) -> None:
        """Store ``result`` as the job's final result, under its id."""

    def cancel(self, task_ids: list[str]) -> None:
        """Revoke these replicas: a queued one never runs, a running one is terminated."""


class CeleryFleet:
    """The worker's Celery app: its result backend and its remote control."""

    def store_final(self, result: JobResult) -> None:
        from worker import app

        app.backend.store_result(result.id, result.model_dump(mode="json"), "SUCCESS")

    def cancel(self, task_ids: list[str]) -> None:
        from worker import app

        app.control.revoke(task_ids, terminate=True, signal="SIGTERM")
