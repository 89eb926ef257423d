"""Delivery counts per attempt, kept outside the message (Redis, or this process).

A job that kills its worker process is redelivered with the very same message;
only an outside counter notices, which is how a crash loop is ended after
``SANDRUN_MAX_ATTEMPTS`` deliveries.
"""

from __future__ import annotations

import threading

import redis

ATTEMPT_TTL_SECONDS = 7 * 24 * 3600


class Attempts:
    """How many times each job was delivered to a worker, kept in Redis (or memory).

    Kept outside the message because a job that kills its worker process is
    redelivered with the very same message; only an outside counter notices.
    """

    def __init__(self, client: redis.Redis[bytes] | None) -> None:
        self._client = client
        self._local: dict[str, int] = {}
        self._lock = threading.Lock()

    def begin(self, key: str, result_key: str | None = None, *, redelivered: bool = True
              ) -> tuple[int, bytes | None]:
        """Count this delivery of attempt ``key``; return the delivery number (1 first)
        and, in the same round trip, the raw value at ``result_key`` (a stored result).

        A first delivery is not counted: only a message the broker marks as
        redelivered can be part of a crash loop, so the common path costs no write.
        """
        if self._client is None:
            with self._lock:
                self._local[key] = self._local.get(key, 0) + 1
                return self._local[key], None
        pipe = self._client.pipeline(transaction=False)
        if redelivered:
            pipe.incr(f"sandrun:attempts:{key}")
            pipe.expire(f"sandrun:attempts:{key}", ATTEMPT_TTL_SECONDS)
        if result_key is not None:
            pipe.get(result_key)
        replies = pipe.execute() if len(pipe) else []
        count = int(replies[0]) + 1 if redelivered else 1
        return count, (replies[-1] if result_key is not None else None)

    def finish(self, key: str, deliveries: int = 2) -> None:
        """Forget the count once the attempt has ended (nothing to forget for a first
        delivery)."""
        if self._client is None:
            with self._lock:
                self._local.pop(key, None)
        elif deliveries > 1:
            self._client.delete(f"sandrun:attempts:{key}")
