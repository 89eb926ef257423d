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
from worker.broker.streamwrites import StreamAppend
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


class Request:
    """What Celery hands the store as ``request``: attributes, the writes among them."""

    def __init__(self, writes: list[tuple[str, str, str]] | None) -> None:
        self.sandrun_writes = writes
        self.id = "t"


def test_a_final_result_takes_its_writes_along_and_drops_them(
        backend: Any, redis_client: redis.Redis) -> None:
    request = Request([("w:a", '"x"', "60000"), ("w:b", "1", "")])
    backend.store_result("t5", "ok", states.SUCCESS, request=request)
    assert stored(redis_client, backend, "t5")["status"] == "SUCCESS"
    assert (redis_client.get("w:a"), redis_client.get("w:b")) == (b'"x"', b"1")
    assert 0 < redis_client.pttl("w:a") <= 60000 and redis_client.ttl("w:b") == -1
    assert request.sandrun_writes is None  # taken: nothing is left to apply


def test_writes_land_even_where_a_success_is_kept(backend: Any,
                                                  redis_client: redis.Redis) -> None:
    """A copy's late FAILURE leaves the stored SUCCESS; its job has finished either way."""
    backend.store_result("t6", "ok", states.SUCCESS)
    backend.store_result("t6", RuntimeError("late"), states.FAILURE,
                         request=Request([("w:c", '"done"', "")]))
    assert stored(redis_client, backend, "t6")["status"] == "SUCCESS"
    assert redis_client.get("w:c") == b'"done"'


def test_a_state_that_is_not_final_leaves_the_writes_to_the_result(
        backend: Any, redis_client: redis.Redis) -> None:
    request = Request([("w:d", '"x"', "")])
    backend.store_result("t7", {"pid": 1}, states.STARTED, request=request)
    assert redis_client.get("w:d") is None and request.sandrun_writes
    backend.store_writes(request.sandrun_writes)  # what a task does when none was stored
    assert redis_client.get("w:d") == b'"x"'


def test_shares_server_tells_the_result_redis_from_another(
        backend: Any, redis_client: redis.Redis) -> None:
    assert backend.shares_server(backend.client)
    assert not backend.shares_server(redis.Redis(host="127.0.0.1", port=1))


def test_a_sent_state_lands_once_its_reply_is_read_and_keeps_a_success(
        backend: Any, redis_client: redis.Redis) -> None:
    first = backend.send_state("t8", {"pid": 1}, states.STARTED)  # loads the script
    first()
    assert stored(redis_client, backend, "t8")["status"] == "STARTED"
    pool = backend.client.connection_pool
    reply = backend.send_state("t9", {"pid": 3}, states.STARTED)  # sent, not waited for
    assert len(pool._in_use_connections) == 1  # its connection holds the reply
    reply()
    assert not pool._in_use_connections
    meta = stored(redis_client, backend, "t9")
    assert (meta["status"], meta["result"]) == ("STARTED", {"pid": 3})
    backend.store_result("t9", "ok", states.SUCCESS)
    backend.send_state("t9", {"pid": 4}, states.STARTED)()  # a copy's, late
    assert stored(redis_client, backend, "t9")["status"] == "SUCCESS"


def test_a_sent_state_whose_script_redis_forgot_is_logged_and_the_next_store_reloads(
        backend: Any, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    backend.store_result("t10", 1, states.SUCCESS)
    redis_client.script_flush()  # as a Redis that restarted
    backend.send_state("t11", {"pid": 1}, states.STARTED)()
    assert redis_client.get(backend.get_key_for_task("t11")) is None
    logged = capsys.readouterr()
    assert "state_not_stored" in logged.out + logged.err
    backend.send_state("t11", {"pid": 1}, states.STARTED)()  # stored at once: reloads
    assert stored(redis_client, backend, "t11")["status"] == "STARTED"
    backend.send_state("t12", {"pid": 1}, states.STARTED)()  # and sends again
    assert stored(redis_client, backend, "t12")["status"] == "STARTED"


def test_a_state_sent_to_a_redis_out_of_reach_fails_as_a_store_would() -> None:
    app = make_app("redis://127.0.0.1:1/0")
    app.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 0}}
    backend = app.backend
    backend._script_loaded = True  # as after a first store
    with pytest.raises(redis.exceptions.ConnectionError):
        backend.send_state("t13", {"pid": 1}, states.STARTED)


def test_a_final_result_appends_its_stream_entries_in_the_same_script(
        backend: Any, redis_client: redis.Redis) -> None:
    stream = StreamAppend("live:t14", 100, 60, ((("k", "out"), ("d", b"1\n")),
                                                (("k", "end"), ("d", b""))))
    request = Request([("w:e", "1", "")])
    request.sandrun_stream = stream  # type: ignore[attr-defined]
    backend.store_result("t14", {"pid": 1}, states.STARTED, request=request)
    assert redis_client.xlen("live:t14") == 0  # not with a state that is not final
    backend.store_result("t14", "ok", states.SUCCESS, request=request)
    entries = [(f[b"k"], f[b"d"]) for _, f in redis_client.xrange("live:t14")]
    assert entries == [(b"out", b"1\n"), (b"end", b"")]
    assert 0 < redis_client.ttl("live:t14") <= 60 and redis_client.get("w:e") == b"1"
    assert request.sandrun_stream is None and request.sandrun_writes is None  # type: ignore[attr-defined]
    backend.store_stream(StreamAppend("live:t15", 100, 30, ((("k", "end"), ("d", b"")),)))
    assert redis_client.xlen("live:t15") == 1 and 0 < redis_client.ttl("live:t15") <= 30
