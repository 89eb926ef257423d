"""A job's running lease as its delivery sees it (:mod:`worker.stores.leases`).

The task base class claims the lease in the round trip that reads a job's stored
result, before its sandbox starts, and releases it once the job's outcome is
stored (or once the delivery ends storing nothing: deferred, retried, dropped).
A delivery that finds the lease held by another, live, delivery neither runs nor
sleeps in its slot: the same message is published again after :func:`countdown`
and this delivery ends (acknowledged). When it comes back, it looks for the stored
final result first, as every delivery does, and ends with it if the holder
finished the job; if the holder's lease lapsed (its worker died, or was cut off
from Redis longer than the lease) it takes the lease and runs the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from worker.broker.policies import TRANSIENT_STORAGE_ERRORS
from worker.protocol import LEASE_WAITS_HEADER
from worker.stores.leases import Claim, Leases

#: The first wait of a delivery that found its job's lease held; it doubles with each
#: wait, up to a third of the lease (its renewal period).
FIRST_WAIT_SECONDS = 1.0
#: Waits counted in the header at most (a broker writer's larger value counts as this).
MAX_WAITS = 32
log = structlog.get_logger("sandrun.task")


def waits(headers: Mapping[str, Any] | None) -> int:
    """How often the message waited for its job's lease already (a header the sender
    could forge: anything but a small non-negative integer counts as none)."""
    value = (headers or {}).get(LEASE_WAITS_HEADER)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_WAITS:
        return value
    return 0


def countdown(claim: Claim, waited: int, ttl: float, visibility: float | None = None
              ) -> float:
    """Seconds before a delivery that found the lease held looks again: doubling from
    :data:`FIRST_WAIT_SECONDS` with each wait, never past the holder's lease (plus a
    tenth of a second), a third of the lease, nor half the Redis ``visibility`` timeout
    (a worker holds a countdown message unacknowledged until it is due; held longer than
    that timeout, kombu would hand it out again). A holder that finishes stores its
    result before it releases, so the look that follows finds that result."""
    doubling = FIRST_WAIT_SECONDS * float(1 << min(waited, 16))
    longest = min(ttl / 3, visibility / 2 if visibility else ttl)
    return round(max(0.5, min(doubling, claim.remaining + 0.1, longest)), 3)


def release(leases: Leases, task_id: str, token: str) -> None:
    """Release ``task_id``'s lease if ``token`` still holds it. Redis out of reach is
    logged, never raised: the outcome is stored already, and the lease lapses by itself
    (the worker's main process also releases the leases of jobs that ended)."""
    try:
        leases.release(task_id, token)
    except TRANSIENT_STORAGE_ERRORS as exc:
        log.warning("lease_not_released", task_id=task_id, error=repr(exc))
