"""Delivery counts per attempt, kept outside the message (Redis, or this process).

A job that kills its worker process is redelivered with the very same message;
only an outside counter notices, which is how a crash loop is ended after
``SANDRUN_MAX_ATTEMPTS`` deliveries.

:meth:`Attempts.begin` hands out an :class:`Attempt`: the handle of one delivery
of one attempt, which owns its counter key and forgets it with
:meth:`Attempt.finish` once the attempt has ended, so no caller spells keys.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis

from worker.stores.leases import GRANTED, Claim, Leases

if TYPE_CHECKING:
    from worker.stores.revoked import Revocations

ATTEMPT_TTL_SECONDS = 7 * 24 * 3600
KEY_PREFIX = "sandrun:attempts:"


class Attempt:
    """One delivery of attempt ``number`` (1 first) of task ``task_id``.

    ``deliveries`` is how many times the broker has handed this attempt to a
    worker, this time included (1 first); ``stored`` is the raw value read at the
    ``result_key`` given to :meth:`Attempts.begin`, in the same round trip (None
    when absent or not asked for); ``claim`` what the claim of the job's running lease
    in that round trip found (granted when none was asked for); ``revoked`` whether the
    cancel records looked up in that round trip say the task or job was cancelled.
    """

    __slots__ = ("_finished", "_store", "claim", "deliveries", "number", "revoked", "stored",
                 "task_id")

    def __init__(self, store: Attempts, task_id: str, number: int, deliveries: int = 1,
                 stored: bytes | None = None) -> None:
        self._store = store
        self._finished = False
        self.task_id = task_id
        self.number = number
        self.deliveries = deliveries
        self.stored = stored
        self.claim: Claim = GRANTED
        self.revoked = False

    @property
    def key(self) -> str:
        """The counter's key: one per task id and attempt number."""
        return f"{KEY_PREFIX}{self.task_id}:{self.number}"

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._finished

    def finish(self) -> None:
        """Forget the count once the attempt has ended (run, vetoed, deferred, dropped or
        handed to a retry); later calls do nothing."""
        if not self._finished:
            self._finished = True
            self._store.forget(self)

    def uncount(self) -> None:
        """Take this delivery out of the count again: it started nothing (it found the
        job's running lease held and waits), so a copy that a broker redelivers while it
        waits (kombu's sweep, a dropped connection) never counts as a crashed run."""
        if self.deliveries > 1 and not self._finished:
            self._store.uncount(self)

    def __repr__(self) -> str:
        return (f"Attempt({self.task_id!r}, number={self.number}, "
                f"deliveries={self.deliveries}, finished={self._finished})")


class Attempts:
    """How many times each attempt was delivered to a worker, kept in Redis (or, with
    no client, in this process's memory: what tests and a Redis-less setup use).

    Kept outside the message because a job that kills its worker process is
    redelivered with the very same message; only an outside counter notices.
    """

    def __init__(self, client: redis.Redis[bytes] | None) -> None:
        self._client = client
        self._local: dict[str, int] = {}
        self._lock = threading.Lock()

    def begin(self, task_id: str, number: int, *, redelivered: bool,
              result_key: str | None = None, leases: Leases | None = None,
              token: str | None = None, revocations: Revocations | None = None,
              cancel_ids: Iterable[str | None] = ()) -> Attempt:
        """Count this delivery of attempt ``number`` of ``task_id`` and, in the same round
        trip, look up the cancel records of ``cancel_ids`` in ``revocations``
        (:attr:`Attempt.revoked`), claim the job's running lease for ``token`` (when
        ``leases`` and ``token`` are given: :mod:`worker.stores.leases`) and read the raw
        value at ``result_key`` (a stored result), in that order.

        A first delivery is not counted: only a message the broker marks as
        redelivered can be part of a crash loop, so the common path costs no write.
        A cancelled delivery has counted and claimed all the same, and its caller takes
        both back (:meth:`Attempt.uncount`, the lease's release once it stored the
        ``cancelled`` result): cancels are rare, a round trip of their own for every
        delivery is not.
        """
        attempt = Attempt(self, task_id, number)
        if revocations is not None and revocations.client is not self._client:
            attempt.revoked = revocations.revoked(cancel_ids)  # kept elsewhere: its own look
            revocations = None
        if self._client is None:
            if redelivered:
                self._count_locally(attempt)
            return attempt
        pipe = self._client.pipeline(transaction=False)
        cancelled = revocations.queue_check(pipe, cancel_ids) if revocations else None
        claimed = None
        if leases is not None and token is not None and leases.client is not None:
            claimed = leases.queue_claim(pipe, task_id, token)  # before the result's read
        if redelivered:
            pipe.incr(attempt.key)
            pipe.expire(attempt.key, ATTEMPT_TTL_SECONDS)
        if result_key is not None:
            pipe.get(result_key)
        _read(attempt, pipe.execute() if len(pipe) else [], cancelled, claimed,
              counted=redelivered, looked=result_key is not None)
        return attempt

    def _count_locally(self, attempt: Attempt) -> None:
        with self._lock:
            self._local[attempt.key] = self._local.get(attempt.key, 0) + 1
            attempt.deliveries = self._local[attempt.key] + 1

    def uncount(self, attempt: Attempt) -> None:
        """Undo the count of ``attempt``'s delivery; :meth:`Attempt.uncount` calls this."""
        if self._client is None:
            with self._lock:
                self._local[attempt.key] = max(0, self._local.get(attempt.key, 1) - 1)
        else:
            self._client.decr(attempt.key)

    def forget(self, attempt: Attempt) -> None:
        """Delete ``attempt``'s count (nothing was written for a first delivery);
        :meth:`Attempt.finish` calls this."""
        if attempt.deliveries <= 1:
            return
        if self._client is None:
            with self._lock:
                self._local.pop(attempt.key, None)
        else:
            self._client.delete(attempt.key)


def _read(attempt: Attempt, replies: list[Any], cancelled: Callable[[list[Any]], bool] | None,
          claimed: Callable[[list[Any]], Claim] | None, *, counted: bool, looked: bool) -> None:
    """Fill ``attempt`` from the replies of :meth:`Attempts.begin`'s pipeline, in the order
    it queued them: cancel records, lease claim (three replies), count, stored result."""
    if cancelled is not None:
        attempt.revoked = cancelled(replies)
        replies = replies[1:]
    if claimed is not None:
        attempt.claim = claimed(replies)
        replies = replies[3:]
    if counted:
        attempt.deliveries = int(replies[0]) + 1
    if looked:
        attempt.stored = replies[-1]
