"""Named tenacity policies for in-process transient retries.

Each covers a short, local hiccup inside one process; none is ever stacked on a
failure that a Celery retry (the retry plugin) also handles: a job's failure is
retried by Celery, a lost Redis connection inside one call by these.

* :func:`publish_policy`: a producer publishing a job rides out a broker outage
  of up to ``seconds`` (``SANDRUN_PUBLISH_RETRY_SECONDS``, default 10), waiting
  0.1 s doubling to 1 s between tries.
* :func:`storage_policy`: one plugin storage call against Redis is tried up to 3
  times, 50 ms then 100 ms apart, on connection errors only (a wrong value type
  is not retried).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import kombu.exceptions
import redis
import tenacity

T = TypeVar("T")
#: Errors that mean "the broker is not reachable right now".
TRANSIENT_PUBLISH_ERRORS = (kombu.exceptions.OperationalError, redis.ConnectionError,
                            ConnectionError, TimeoutError)
TRANSIENT_STORAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def transient_publish_error(exc: BaseException) -> bool:
    """Whether a publish error means "the broker is not reachable right now".

    Celery's Redis result consumer reports its own lost connection as a
    RuntimeError about the result store; that is transient too."""
    return isinstance(exc, TRANSIENT_PUBLISH_ERRORS) or (
        isinstance(exc, RuntimeError) and "result store" in str(exc))


def publish_policy(seconds: float) -> tenacity.Retrying:
    """Publishing a job: transient broker errors, exponential waits, ``seconds`` at most."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient_publish_error),
        wait=tenacity.wait_exponential(multiplier=0.1, max=1.0),
        stop=tenacity.stop_after_delay(seconds), reraise=True)


class _FirstTryBare:
    """A tenacity policy whose first try is a plain call: tenacity's per-call machinery
    (attempt objects, statistics, the action chain) costs about as much CPU as the Redis
    call it guards, and the first try almost always succeeds. Only once it fails with a
    retried error does ``rest`` (the same waits, one try fewer) take over."""

    def __init__(self, first_wait: float, rest: tenacity.Retrying,
                 sleep: Callable[[float], None]) -> None:
        self.first_wait, self.rest, self.sleep = first_wait, rest, sleep

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except TRANSIENT_STORAGE_ERRORS:
            pass
        self.sleep(self.first_wait)
        return self.rest(fn, *args, **kwargs)


def storage_policy(sleep: Callable[[float], None] = tenacity.nap.sleep) -> _FirstTryBare:
    """One Redis plugin-storage call: 3 tries on connection errors, 50 ms then 100 ms."""
    return _FirstTryBare(0.05, tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TRANSIENT_STORAGE_ERRORS),
        wait=tenacity.wait_fixed(0.1), stop=tenacity.stop_after_attempt(2), reraise=True,
        sleep=sleep), sleep)
