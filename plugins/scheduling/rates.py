"""Fleet-wide rate limits of the ``scheduling`` plugin: a token bucket per scope in Redis.

``rate="100/m"`` lets jobs of one scope (a queue, or a value of ``rate_label``, such
as a tenant) *start* at most 100 times a minute across every worker, with bursts of
``rate_burst`` (default 1, as Celery's own ``rate_limit``: evenly spaced). The
bucket is kept as GCRA (the generic cell rate algorithm): one number per scope,
the theoretical arrival time of the next job, in seconds of the Redis clock (so the
hosts' clocks never matter), changed by one Lua script.

A job over the rate is not refused and does not sleep in its pool slot: the script
*reserves* it the next free start time and the plugin defers it (``JobDeferred``,
re-published with a countdown) until then. When it comes back it finds its
reservation and runs, so each job is deferred once however long the backlog, and
the backlog drains at the rate (a job back early, by a host's clock, waits the
rest). Reservations of jobs that never came back (cancelled, expired) are dropped
an hour after their slot; their slot is lost, never given twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from worker import ExecutionContext, Job, JobDeferred

PREFIX = "sandrun:scheduling:rate:"
#: A job back this early for its reserved slot runs anyway (s): timers are not exact.
EARLY_TOLERANCE = 0.01
#: How long a reservation outlives its slot before it is dropped (s).
RESERVATION_GRACE = 3600
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])\s*$")

# KEYS: tat, reservations. ARGV: task id, interval s, burst, tolerance s, grace s.
# Returns "0" to run now, else the seconds to wait (as text: Lua numbers become integers).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local tol, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - grace)
local slot = redis.call('ZSCORE', KEYS[2], ARGV[1])
if slot then
  slot = tonumber(slot)
  if slot - now > tol then return tostring(slot - now) end
  redis.call('ZREM', KEYS[2], ARGV[1])
  return '0'
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local start = tat - (burst - 1) * interval
local keep = math.ceil((tat + interval - now + grace) * 1000)
redis.call('SET', KEYS[1], string.format('%.6f', tat + interval), 'PX', keep)
if start - now <= tol then return '0' end
redis.call('ZADD', KEYS[2], start, ARGV[1])
redis.call('PEXPIRE', KEYS[2], keep)
return tostring(start - now)
"""


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` job starts per ``period`` seconds."""

    count: float
    period: float

    @property
    def interval(self) -> float:
        """Seconds between two starts at this rate."""
        return self.period / self.count


def parse_rate(text: str) -> Rate:
    """``"100/m"``, ``"5/s"``, ``"10/5m"`` (count per [number of] s, m, h or d)."""
    match = _RATE.match(text)
    count = float(match.group(1)) if match else 0.0
    span = float(match.group(2) or 1) if match else 0.0
    if match is None or count <= 0 or span <= 0:
        raise ValueError(f"rate {text!r} is not a rate such as '100/m', '5/s' or '10/5m' "
                         "(a positive number of job starts per s, m, h or d)")
    return Rate(count, span * PERIODS[match.group(3)])


class RateLimiter:
    """The token buckets, shared by every process on the same Redis."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client
        self._take = client.register_script(_TAKE)

    def take(self, scope: str, task_id: str, rate: Rate, burst: int = 1) -> float:
        """Let ``task_id`` start now (0.0) or reserve its start: the seconds to wait."""
        wait = self._take(keys=[PREFIX + scope, PREFIX + scope + ":reserved"],
                          args=[task_id, rate.interval, burst, EARLY_TOLERANCE,
                                RESERVATION_GRACE])
        return max(0.0, float(wait))


class RateGate:
    """What ``on_execute`` asks: may this job start now, at its scope's rate? Raises
    ``JobDeferred`` until its reserved start when it may not."""

    def __init__(self, rate: str | None, label: str | None, burst: int,
                 client: Callable[[], redis.Redis[bytes]], default_queue: str) -> None:
        self.rate = None if rate is None else parse_rate(rate)
        self.label, self.burst, self.default_queue = label, burst, default_queue
        self._client = client
        self._limiter: RateLimiter | None = None

    def scope(self, job: Job, queue: str | None) -> str:
        """What one bucket counts: the job's queue, or the value of its rate label."""
        if self.label is not None:
            return f"label:{self.label}={job.labels.get(self.label, '')}"
        return f"queue:{queue or job.queue or self.default_queue}"

    def check(self, job: Job, context: ExecutionContext, logger: Any,
              deferring: Callable[[], None]) -> None:
        """Return if ``job`` may start; raise ``JobDeferred`` to its reserved start if not,
        calling ``deferring`` first (the plugin gives back the lease the job took)."""
        if self.rate is None:
            return
        if self._limiter is None:
            self._limiter = RateLimiter(self._client())
        scope = self.scope(job, context.queue)
        wait = self._limiter.take(scope, context.task_id, self.rate, self.burst)
        if wait <= 0:
            return
        deferring()
        logger.info("job_deferred_over_rate", scope=scope, countdown=round(wait, 3))
        raise JobDeferred(wait, f"jobs of {scope} start at most {self.rate.count:g} per "
                                f"{self.rate.period:g}s (rate); this one starts in {wait:.2f}s")
