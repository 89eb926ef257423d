"""Deadlines on the scheduling plugin's own paths: a held or fair job whose deadline
passed while the plugin kept it is never published.

A job published to the broker carries Celery's ``expires`` (its ``deadline``), and
the worker that receives it late stores it as revoked with the reason ``expired``.
Held and fair jobs wait in Redis instead, so when the beat (held) or a pump (fair)
claims one past its deadline, it stores that same state itself and forgets the
job: the client reads ``expired`` either way.
"""

from __future__ import annotations

from typing import Any

from worker import Publication


def past_deadline(pub: Publication, now: float) -> bool:
    """Whether ``pub``'s deadline (Celery's ``expires``) has passed at ``now``."""
    return pub.expires is not None and pub.expires.timestamp() <= now


def store_expired(app: Any, pub: Publication, logger: Any, fair: bool) -> None:
    """Record ``pub`` as Celery records an expired message: REVOKED, reason ``expired``."""
    app.backend.mark_as_revoked(pub.task_id, "expired")
    logger.info("job_expired", job_id=pub.task_id, queue=pub.queue, fair=fair,
                deadline=pub.expires.isoformat() if pub.expires else None)
