"""Deadlines and cancels on the scheduling plugin's own paths: a held or fair job whose
deadline passed, or that was cancelled, while the plugin kept it is never published.

A job published to the broker carries Celery's ``expires`` (its ``deadline``), and
the worker that receives it late stores it as revoked with the reason ``expired``.
Held and fair jobs wait in Redis instead, so when the beat (held) or a pump (fair)
claims one past its deadline, it stores that same state itself and forgets the
job: the client reads ``expired`` either way.

A cancel is remembered in the result backend's Redis (``worker.Revocations``); a held
or fair job claimed after its cancel (the record names its task id or, for a consensus
replica, the job id in its body) stores ``cancelled`` and is forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker import Publication, Revocations, cancelled_result, revocations_for


def past_deadline(pub: Publication, now: float) -> bool:
    """Whether ``pub``'s deadline (Celery's ``expires``) has passed at ``now``."""
    return pub.expires is not None and pub.expires.timestamp() <= now


def store_expired(app: Any, pub: Publication, logger: Any, fair: bool) -> None:
    """Record ``pub`` as Celery records an expired message: REVOKED, reason ``expired``."""
    app.backend.mark_as_revoked(pub.task_id, "expired")
    logger.info("job_expired", job_id=pub.task_id, queue=pub.queue, fair=fair,
                deadline=pub.expires.isoformat() if pub.expires else None)


class Cancels:
    """The fleet's cancel records, read before a held or fair job is published."""

    def __init__(self, app: Callable[[], Any]) -> None:
        self._app = app
        self._records: Revocations | None = None

    def cancelled(self, pub: Publication) -> bool:
        """Whether ``pub``'s task, or the job in its body, was cancelled."""
        if self._records is None:
            self._records = revocations_for(self._app())
        body = pub.args[0] if pub.args and isinstance(pub.args[0], dict) else {}
        return self._records.revoked((pub.task_id, body.get("id")))

    def store(self, pub: Publication, logger: Any, fair: bool) -> None:
        """Record ``pub`` as a worker records a cancelled job it skips: ``cancelled``."""
        self._app().backend.store_result(pub.task_id, cancelled_result(pub.task_id).model_dump(
            mode="json", exclude={"provenance"}), "SUCCESS")
        logger.info("job_cancelled_skipped", job_id=pub.task_id, queue=pub.queue, fair=fair)
