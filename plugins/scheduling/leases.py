"""Fleet-wide concurrency leases of the ``scheduling`` plugin.

:class:`Semaphore` is a Redis sorted set per scope (``sandrun:scheduling:leases:
<scope>``): running job ids scored by the expiry of their lease, in milliseconds
of the Redis clock (so the hosts' clocks never matter). Taking a lease drops the
expired ones first, in the same Lua script, so a worker that died holding one
frees its place ``ttl`` seconds after its last renewal. :class:`LeaseKeeper`
renews, from a thread of the process running the jobs, the leases it holds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

PREFIX = "sandrun:scheduling:leases:"

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: lease set. ARGV: id, limit, ttl ms. Re-entrant: a job already holding a lease keeps it.
_ACQUIRE = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or
   redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return 1
end
return 0
"""
# KEYS: lease set. ARGV: id, ttl ms. Only a lease that still exists is renewed.
_RENEW = _NOW_MS + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class Semaphore:
    """Counted leases per scope, shared by every process on the same Redis."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def acquire(self, scope: str, task_id: str, limit: int, ttl: float) -> bool:
        """Take one of ``limit`` leases of ``scope`` for ``ttl`` seconds (expired ones are
        dropped first; a job that already holds one keeps it)."""
        return bool(self._acquire(keys=[PREFIX + scope], args=[task_id, limit, _ms(ttl)]))

    def renew(self, scope: str, task_id: str, ttl: float) -> bool:
        """Push a lease's expiry ``ttl`` seconds out; False if it is gone."""
        return bool(self._renew(keys=[PREFIX + scope], args=[task_id, _ms(ttl)]))

    def release(self, scope: str, task_id: str) -> None:
        """Give a lease back."""
        self.client.zrem(PREFIX + scope, task_id)

    def holders(self, scope: str) -> list[str]:
        """Ids holding a lease of ``scope`` now (expired ones included until the next take)."""
        return [x.decode() for x in self.client.zrange(PREFIX + scope, 0, -1)]


class LeaseKeeper:
    """Renews this process's leases every ``ttl / 3`` s while their jobs run.

    A lease is renewed until it is released or until its job's timeout plus a
    grace period has passed (a lease whose job vanished without ``on_result``, for
    example deferred by a later hook, then lapses on its own). The thread starts
    with the first lease in each process (pool processes are forked)."""

    GRACE_SECONDS = 60.0

    def __init__(self, semaphore: Callable[[], Semaphore], ttl: float, logger: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._semaphore, self.ttl, self._log, self._clock = semaphore, ttl, logger, clock
        self._leases: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, task_id: str, scope: str, job_timeout: float) -> None:
        """Keep the lease of ``task_id`` in ``scope`` alive for at most the job's timeout."""
        with self._lock:
            self._leases[task_id] = (scope, self._clock() + job_timeout + self.GRACE_SECONDS)
            if self._thread is None or self._pid != os.getpid():
                self._pid, self._stop = os.getpid(), threading.Event()
                self._thread = threading.Thread(target=self._run, name="sandrun-leases",
                                                daemon=True)
                self._thread.start()

    def release(self, task_id: str) -> None:
        """Give the lease of ``task_id`` back, if this process holds one."""
        with self._lock:
            held = self._leases.pop(task_id, None)
        if held is not None:
            self._semaphore().release(held[0], task_id)

    def held(self) -> dict[str, str]:
        """Task id -> scope of the leases this process holds."""
        with self._lock:
            return {task_id: scope for task_id, (scope, _) in self._leases.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew_all()
            except redis.RedisError as exc:
                if self._log is not None:
                    self._log.warning("concurrency_lease_renewal_failed", error=str(exc))

    def renew_all(self) -> None:
        """Renew every lease once; drop those past their deadline or gone from Redis."""
        now = self._clock()
        for task_id, (scope, deadline) in list(self._leases.items()):
            alive = now <= deadline and self._semaphore().renew(scope, task_id, self.ttl)
            if not alive:
                with self._lock:
                    self._leases.pop(task_id, None)
                if self._log is not None:
                    self._log.info("concurrency_lease_dropped", job_id=task_id, scope=scope,
                                   expired=now > deadline)

    def close(self) -> None:
        """Stop renewing and give back every lease still held (the process is stopping)."""
        self._stop.set()
        for task_id in list(self.held()):
            with contextlib.suppress(redis.RedisError):  # else it expires after ttl
                self.release(task_id)
