"""The named tenacity policies, with an injected sleep (no real waiting)."""

from __future__ import annotations

import kombu.exceptions
import pytest
import redis

from worker.broker.policies import publish_policy, storage_policy, transient_publish_error


def flaky(failures: list[BaseException]):  # type: ignore[no-untyped-def]
    calls = []

    def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    return call, calls


def test_storage_policy_retries_connection_errors_three_times() -> None:
    slept: list[float] = []
    call, calls = flaky([redis.ConnectionError("a"), redis.TimeoutError("b")])
    assert storage_policy(slept.append)(call) == "ok"
    assert len(calls) == 3 and slept == [0.05, 0.1]
    call, calls = flaky([redis.ConnectionError("x")] * 3)
    with pytest.raises(redis.ConnectionError):
        storage_policy(slept.append)(call)
    assert len(calls) == 3


def test_storage_policy_does_not_retry_other_errors() -> None:
    call, calls = flaky([redis.ResponseError("WRONGTYPE")])
    with pytest.raises(redis.ResponseError):
        storage_policy(lambda _: None)(call)
    assert len(calls) == 1


def test_publish_policy_classifies_transient_errors() -> None:
    assert transient_publish_error(kombu.exceptions.OperationalError("down"))
    assert transient_publish_error(RuntimeError("... reconnect to the Celery result store ..."))
    assert not transient_publish_error(RuntimeError("something else"))
    assert not transient_publish_error(ValueError("bad"))
    call, calls = flaky([ConnectionError("refused")])
    assert publish_policy(5)(call) == "ok" and len(calls) == 2
