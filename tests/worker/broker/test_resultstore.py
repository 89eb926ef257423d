"""GuardedRedisBackend against a private Redis: Celery's guard of a stored SUCCESS,
kept in the one script that writes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from celery import states

from tests.conftest import RedisServer
from worker.broker.factory import make_app
from worker.broker.resultstore import GuardedRedisBackend
from worker.broker.urls import kombu_url


@pytest.fixture
def backend(redis_server: RedisServer, redis_client: redis.Redis) -> Any:
    app = make_app(kombu_url(redis_server.url))
    assert isinstance(app.backend, GuardedRedisBackend)
    return app.backend


def stored(client: redis.Redis, backend: Any, task_id: str) -> dict[str, Any]:
    raw = client.get(backend.get_key_for_task(task_id))
    assert raw is not None
    return dict(json.loads(raw))


def test_every_redis_url_of_a_sandrun_app_gets_the_guarded_backend(
        redis_server: RedisServer) -> None:
    for url in (kombu_url(redis_server.url), "redis://127.0.0.1:1/0"):
        assert isinstance(make_app(url).backend, GuardedRedisBackend)


def test_states_are_stored_until_a_success_which_stays(backend: Any,
                                                      redis_client: redis.Redis) -> None:
    backend.store_result("t1", {"pid": 1}, states.STARTED)
    assert stored(redis_client, backend, "t1")["status"] == "STARTED"
    backend.store_result("t1", 42, states.SUCCESS)
    for late in (states.STARTED, states.FAILURE, states.RETRY):  # a copy, a lost worker
        backend.store_result("t1", {"pid": 2} if late == states.STARTED else
                             RuntimeError("late"), late)
    meta = stored(redis_client, backend, "t1")
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", 42, "t1")
    assert backend.get_task_meta("t1")["result"] == 42


def test_a_failure_can_be_replaced_by_a_later_success(backend: Any,
                                                      redis_client: redis.Redis) -> None:
    backend.store_result("t2", RuntimeError("first"), states.FAILURE)
    backend.store_result("t2", "ok", states.SUCCESS)
    assert stored(redis_client, backend, "t2")["status"] == "SUCCESS"


def test_expiry_and_publish_are_celerys(backend: Any, redis_client: redis.Redis) -> None:
    subscriber = redis_client.pubsub()
    key = backend.get_key_for_task("t3")
    subscriber.subscribe(key)
    assert subscriber.get_message(timeout=1) is not None  # the subscription itself
    backend.store_result("t3", "done", states.SUCCESS)
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= backend.expires
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=0.5)
    assert message is not None and json.loads(message["data"])["status"] == "SUCCESS"
    subscriber.close()


def test_an_unreadable_stored_value_is_overwritten(backend: Any,
                                                   redis_client: redis.Redis) -> None:
    redis_client.set(backend.get_key_for_task("t4"), b"not json")
    backend.store_result("t4", 1, states.SUCCESS)
    assert stored(redis_client, backend, "t4")["status"] == "SUCCESS"
