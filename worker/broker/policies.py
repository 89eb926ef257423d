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

import kombu.exceptions
import redis
import tenacity

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


def storage_policy(sleep: Callable[[float], None] = tenacity.nap.sleep) -> tenacity.Retrying:
    """One Redis plugin-storage call: 3 tries on connection errors, 50 ms then 100 ms."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TRANSIENT_STORAGE_ERRORS),
        wait=tenacity.wait_exponential(multiplier=0.05, max=0.1),
        stop=tenacity.stop_after_attempt(3), reraise=True, sleep=sleep)
