"""PluginStorage contract, run against memory and a real (private) Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from worker import Plugin, PluginContext, PluginManager
from worker.errors import StorageError
from worker.stores.ops import Get, Incr, Set, SetDefault
from worker.stores.storage import (
    MemoryStorageBackend,
    PluginStorage,
    RedisStorageBackend,
    StorageBackend,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> StorageBackend:
    if request.param == "memory":
        return MemoryStorageBackend()
    client: redis.Redis = request.getfixturevalue("redis_client")
    return RedisStorageBackend(client)


def test_get_set_delete_json_values(backend: StorageBackend) -> None:
    store = backend.for_plugin("p")
    assert store.get("missing") is None and store.get("missing", 7) == 7
    for value in ["text", 3, 2.5, True, None, [1, "a"], {"k": {"n": 1}}]:
        store.set("key", value)
        assert store.get("key") == value
    assert store.delete("key") is True
    assert store.delete("key") is False
    assert store.get("key") is None


def test_incr_is_compatible_with_set(backend: StorageBackend) -> None:
    store = backend.for_plugin("p")
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    store.set("m", 10)
    assert store.incr("m", -3) == 7 and store.get("m") == 7
    store.set("s", "text")
    with pytest.raises(StorageError, match="cannot incr key 's'"):
        store.incr("s")


def test_keys_are_namespaced_and_globbed(backend: StorageBackend) -> None:
    a, b = backend.for_plugin("a"), backend.for_plugin("b")
    a.set("job:1", 1)
    a.set("job:2", 2)
    a.set("other", 3)
    b.set("job:9", 9)
    assert a.keys() == ["job:1", "job:2", "other"]
    assert a.keys("job:*") == ["job:1", "job:2"]
    assert b.keys() == ["job:9"] and b.get("job:1") is None


def test_unstorable_value_and_bad_ttl(backend: StorageBackend) -> None:
    store = backend.for_plugin("p")
    with pytest.raises(StorageError, match="cannot be stored"):
        store.set("k", object())
    with pytest.raises(StorageError, match="ttl must be a positive"):
        store.set("k", 1, ttl=0)


def test_batch_gives_each_result_in_order(backend: StorageBackend) -> None:
    store = backend.for_plugin("p")
    store.set("n", 4)
    assert store.batch(Get("missing", "dflt"), Set("k", {"a": 1}), Incr("n", 2), Get("k"),
                       Incr("fresh", ttl=30)) == ["dflt", None, 6, {"a": 1}, 1]
    assert store.batch() == []


def test_batch_set_default_keeps_what_is_there(backend: StorageBackend) -> None:
    store = backend.for_plugin("p")
    assert store.batch(SetDefault("k", {"first": True}, ttl=30)) == [{"first": True}]
    assert store.batch(SetDefault("k", {"first": False})) == [{"first": True}]
    store.set("null", None)
    assert store.batch(SetDefault("null", "replaced")) == [None]  # a stored null is a value
    assert store.get("k") == {"first": True} and store.get("null") is None


def test_batch_refuses_bad_input_before_running_any_of_it(backend: StorageBackend) -> None:
    store = backend.for_plugin("p")
    with pytest.raises(StorageError, match="cannot be stored"):
        store.batch(Set("a", 1), Set("b", object()))
    with pytest.raises(StorageError, match="ttl must be a positive"):
        store.batch(Set("a", 1), Incr("c", ttl=0))
    store.set("s", "text")
    with pytest.raises(StorageError, match="cannot incr key 's'"):
        store.batch(Incr("s"))
    if isinstance(backend, RedisStorageBackend):
        assert store.get("a") is None  # checked before anything was sent


def test_redis_batch_is_one_round_trip_and_expires_what_it_creates(
        redis_client: redis.Redis) -> None:
    store = RedisStorageBackend(redis_client).for_plugin("auth")
    store.set("kept", 1)
    store.batch(Get("warm"))  # the first call loads the script

    def calls() -> dict[str, int]:
        stats = redis_client.info("commandstats")
        return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
                for name in ("evalsha", "eval", "multi")}

    before = calls()
    assert store.batch(SetDefault("kept", 2, ttl=30), SetDefault("new", 3, ttl=30),
                       Incr("count", ttl=30), Get("kept"), Set("plain", "v")) == [1, 3, 1, 1, None]
    assert calls() == {**before, "evalsha": before["evalsha"] + 1}
    assert redis_client.pttl("sandrun:plugin:auth:kept") == -1  # not created: expiry untouched
    assert 0 < redis_client.pttl("sandrun:plugin:auth:new") <= 30_000
    assert 0 < redis_client.pttl("sandrun:plugin:auth:count") <= 30_000
    assert redis_client.pttl("sandrun:plugin:auth:plain") == -1


def test_memory_batch_expires_on_the_injected_clock() -> None:
    clock = Clock()
    store = MemoryStorageBackend(clock).for_plugin("p")
    store.batch(SetDefault("k", "v", ttl=10), Incr("n", ttl=10))
    clock.now += 10.1
    assert store.batch(Get("k"), Get("n")) == [None, None]


def test_memory_ttl_with_injected_clock() -> None:
    clock = Clock()
    store = MemoryStorageBackend(clock).for_plugin("p")
    store.set("k", "v", ttl=10)
    store.set("forever", 1)
    clock.now += 9.9
    assert store.get("k") == "v"
    clock.now += 0.2
    assert store.get("k") is None and store.keys() == ["forever"]


def test_redis_ttl_and_key_layout(redis_client: redis.Redis) -> None:
    store = RedisStorageBackend(redis_client).for_plugin("metrics")
    store.set("k", {"a": 1}, ttl=30)
    assert redis_client.get("sandrun:plugin:metrics:k") == b'{"a":1}'
    assert 0 < redis_client.pttl("sandrun:plugin:metrics:k") <= 30_000
    store.incr("k2")
    assert redis_client.pttl("sandrun:plugin:metrics:k2") == -1


def test_redis_is_shared_between_processes_view(redis_client: redis.Redis,
                                                redis_server: object) -> None:
    one = RedisStorageBackend(redis_client).for_plugin("p")
    two = RedisStorageBackend.from_url(redis_server.url).for_plugin("p")  # type: ignore[attr-defined]
    one.incr("hits")
    two.incr("hits")
    assert one.get("hits") == 2


def test_unreachable_redis_is_a_storage_error(tmp_path: object) -> None:
    store = RedisStorageBackend.from_url("unix:///nonexistent/redis.sock").for_plugin("p")
    with pytest.raises(StorageError, match="check that Redis is reachable"):
        store.get("k")
    with pytest.raises(StorageError):
        store.incr("k")


def test_plugins_get_their_own_namespace_through_the_manager() -> None:
    stores: dict[str, PluginStorage] = {}

    def make(name: str) -> Callable[[], Plugin]:
        class P(Plugin):
            def on_init(self, context: PluginContext) -> None:
                stores[context.name] = context.storage

        P.name = name
        return P

    backend = MemoryStorageBackend()
    manager = PluginManager(storage=backend)
    manager.load_all([make("one")(), make("two")()])
    stores["one"].set("k", 1)
    assert stores["two"].get("k") is None
    assert backend.for_plugin("one").get("k") == 1
