"""Cancelled jobs, remembered in Redis so that every worker skips them, whenever it starts.

Celery's revoke is a broadcast: only the workers running at that moment hear it and
they keep the id in memory. ``JobExecution.cancel`` therefore first writes a record
here (``sandrun:revoked:<job id>``, kept as long as results, ``SANDRUN_RESULT_TTL``),
then broadcasts. The record is read:

* by the task base class before it runs any delivery (a queued message, an ETA, a job
  deferred or retried with a countdown, a redelivery): the task id and, for a
  ``sandrun.run_job`` message, the job id in its body, so a consensus job's replicas
  (``<job id>.<round>.replica-<i>``, the same job in their bodies) are skipped when
  their job is cancelled;
* by the scheduling plugin before it publishes a held or fair job.

Only the id is in a record (its key; the value is ``1``), and ids are checked against
:data:`TASK_ID` before a key is made of them. The records live in the result
backend's Redis (also on RabbitMQ brokers); without a Redis there is nothing to
remember and :meth:`Revocations.revoked` says False.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import redis

from worker.broker.urls import redis_client
from worker.errors import InvalidJob
from worker.models import JobResult

KEY_PREFIX = "sandrun:revoked:"
#: Job ids (``Identifier``) and the task ids made of them (replicas, Celery's uuids).
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,159}")
#: The scheduling plugin's hash of held and fair jobs (``plugins/scheduling/store.py``),
#: read (never written) to say that a cancelled job was held.
HELD_PAYLOADS = "sandrun:scheduling:payload"


def check_task_id(task_id: str) -> str:
    """``task_id`` if it is a job or task id, else InvalidJob saying what an id looks like."""
    if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
        raise InvalidJob([("job_id", f"{str(task_id)[:80]!r} is not a job id (letters, digits, "
                           "'_', '.', '-', starting with a letter or digit, at most 160)")],
                         source="cancel")
    return task_id


def cancelled_result(task_id: str) -> JobResult:
    """What a cancelled job stores: status and outcome ``cancelled``."""
    return JobResult(id=task_id, status="cancelled", outcome="cancelled")


class Revocations:
    """The persisted cancel records, in ``client`` (None: nothing is remembered)."""

    def __init__(self, client: redis.Redis[bytes] | None, ttl: int) -> None:
        self.client = client
        self.ttl = max(1, int(ttl))

    def add(self, task_id: str) -> bool:
        """Remember ``task_id`` as cancelled; False when there is no Redis to keep it in."""
        check_task_id(task_id)
        if self.client is None:
            return False
        self.client.set(KEY_PREFIX + task_id, b"1", ex=self.ttl)
        return True

    def revoked(self, ids: Iterable[str | None]) -> bool:
        """Whether any of ``ids`` (a task id, the job id in its body) was cancelled: one
        EXISTS round trip. Ids that are not ids (a broker writer's) are never looked up."""
        keys = _keys(ids)
        if self.client is None or not keys:
            return False
        return int(self.client.exists(*keys)) > 0

    def queue_check(self, pipe: Any, ids: Iterable[str | None]
                    ) -> Callable[[list[Any]], bool] | None:
        """Queue :meth:`revoked`'s EXISTS on ``pipe`` (a pipeline of this store's client
        that the caller runs); returns what reads the answer from the pipeline's first
        reply, or None when no id can be looked up (nothing queued)."""
        keys = _keys(ids)
        if not keys:
            return None
        pipe.exists(*keys)
        return lambda replies: int(replies[0]) > 0


def _keys(ids: Iterable[str | None]) -> list[str]:
    return [KEY_PREFIX + i for i in ids if isinstance(i, str) and TASK_ID.fullmatch(i)]


def revocations_for(app: Any) -> Revocations:
    """The cancel records of ``app``'s fleet: in its result backend's Redis, kept as long
    as its results (``result_expires``, from ``SANDRUN_RESULT_TTL``). ``app`` is a Celery
    app (not imported here: the scheduling plugin reads this without loading Celery)."""
    ttl: Any = app.conf.result_expires or 86400
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    return Revocations(redis_client(str(app.conf.result_backend)), int(seconds))
