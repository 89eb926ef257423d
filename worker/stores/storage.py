"""Per-plugin key/value storage, namespaced by plugin name.

A plugin gets ``context.storage``: ``get``, ``set`` (optional TTL in seconds),
``delete``, ``incr`` and ``keys``, and ``batch`` to run several operations
(:class:`Get`, :class:`Set`, :class:`SetDefault`, :class:`Incr`) as one atomic step
in one round trip. Values are anything JSON can hold; integers are stored as their
decimal text, so ``incr`` works on values written by ``set``.

Two backends: :class:`MemoryStorageBackend` (one process; tests, producers) and
:class:`RedisStorageBackend` (keys under ``sandrun:plugin:<name>:``), which is
what a worker fleet uses so that every process of every host shares a plugin's
state.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import redis

from worker.broker.policies import storage_policy
from worker.broker.urls import redis_client
from worker.errors import StorageError
from worker.stores.ops import Get, Incr, Op, Set, SetDefault

KEY_PREFIX = "sandrun:plugin:"
#: One policy object for every call: tenacity keeps its per-call state per thread, and
#: building a policy costs as much as the Redis call it guards.
_POLICY = storage_policy()
_MISSING = object()
#: KEYS: one per operation. ARGV: three per operation, its code, its value (an Incr's
#: amount) and its TTL in ms ("" for none). A SET NX before INCRBY gives a counter this
#: creates its expiry; "false" replies are nil. A key that holds no integer stops the
#: script with "NOTINT <operation number>" (the operations before it stay applied).
_BATCH = """
local out = {}
for i, key in ipairs(KEYS) do
  local op, value, px = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if op == 'get' then
    out[i] = redis.call('GET', key)
  elseif op == 'incr' then
    if px ~= '' then redis.call('SET', key, 0, 'NX', 'PX', px) end
    local ok, n = pcall(redis.call, 'INCRBY', key, value)
    if not ok then return redis.error_reply('NOTINT ' .. i) end
    out[i] = n
  else
    local set = {'SET', key, value}
    if op == 'setdefault' then table.insert(set, 'NX') end
    if px ~= '' then table.insert(set, 'PX'); table.insert(set, px) end
    redis.call(unpack(set))
    out[i] = op == 'setdefault' and redis.call('GET', key)
  end
end
return out
"""
_OPCODES = {Get: "get", Set: "set", SetDefault: "setdefault", Incr: "incr"}
_NOT_AN_INTEGER = re.compile(r"NOTINT (\d+)")


def _batch_result(op: Op, reply: Any) -> Any:
    """What one operation of a batch gives, from its reply."""
    if isinstance(op, Incr):
        return int(reply)
    if isinstance(op, Set) or reply is None:
        return op.default if isinstance(op, Get) else None
    return json.loads(reply)


def _encode(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"value of type {type(value).__name__} cannot be stored: store "
                           "JSON data (str, int, float, bool, None, list, dict)") from exc


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and ttl <= 0:
        raise StorageError(f"ttl must be a positive number of seconds, got {ttl!r}")


def _px(ttl: float | None) -> int | None:
    """A checked TTL in Redis's milliseconds (at least 1)."""
    _check_ttl(ttl)
    return None if ttl is None else max(1, int(ttl * 1000))


class PluginStorage(ABC):
    """One plugin's namespace of keys."""

    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any:
        """The stored value, or ``default`` when the key is missing or expired."""

    @abstractmethod
    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; with ``ttl`` it expires after that many seconds."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove a key; True if it existed."""

    @abstractmethod
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Atomically add ``amount`` to an integer (missing counts as 0); return the new value.

        With ``ttl``, a key this call creates expires after that many seconds (a key
        that exists keeps its expiry): counters of one-time events such as nonces."""

    @abstractmethod
    def keys(self, pattern: str = "*") -> list[str]:
        """Keys of this namespace matching a glob ``pattern``, sorted."""

    def batch(self, *ops: Op) -> list[Any]:
        """Run ``ops`` in order as one step and give each one's result, in order.

        The built-in backends run them atomically (no other call sees a state between
        two of them) and, on Redis, in one round trip. An :class:`Incr` of a key that
        holds no integer raises StorageError (on Redis, the other operations still
        apply). This default, for other backends, runs them one call at a time."""
        return [self._one(op) for op in ops]

    def _one(self, op: Op) -> Any:
        if isinstance(op, Get):
            return self.get(op.key, op.default)
        if isinstance(op, Set):
            return self.set(op.key, op.value, op.ttl)
        if isinstance(op, Incr):
            return self.incr(op.key, op.amount, op.ttl)
        current = self.get(op.key, _MISSING)
        if current is _MISSING:
            self.set(op.key, op.value, op.ttl)
            return op.value
        return current


class StorageBackend(ABC):
    """Makes the storage of one plugin."""

    @abstractmethod
    def for_plugin(self, name: str) -> PluginStorage:
        """The namespace of plugin ``name``."""


class MemoryStorage(PluginStorage):
    """A process-local namespace; TTLs use an injectable clock so tests never sleep."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[str, float | None]] = {}
        self._lock = threading.RLock()  # re-entered by batch
        self._clock = clock

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        raw, expires = item
        if expires is not None and self._clock() >= expires:
            del self._data[key]
            return None
        return raw

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            raw = self._live(key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        raw = _encode(value)
        with self._lock:
            self._data[key] = (raw, None if ttl is None else self._clock() + ttl)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._live(key) is not None and self._data.pop(key, None) is not None

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        with self._lock:
            raw = self._live(key)
            current = 0 if raw is None else json.loads(raw)
            if not isinstance(current, int) or isinstance(current, bool):
                raise StorageError(f"cannot incr key {key!r}: it holds {current!r}, not an integer")
            expires = self._data[key][1] if raw is not None else \
                None if ttl is None else self._clock() + ttl
            self._data[key] = (str(current + amount), expires)
            return current + amount

    def keys(self, pattern: str = "*") -> list[str]:
        with self._lock:
            return sorted(k for k in list(self._data)
                          if fnmatch.fnmatchcase(k, pattern) and self._live(k) is not None)

    def batch(self, *ops: Op) -> list[Any]:
        with self._lock:
            return super().batch(*ops)


class MemoryStorageBackend(StorageBackend):
    """Namespaces held in this process; the same name gives the same namespace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._spaces: dict[str, MemoryStorage] = {}
        self._clock = clock

    def for_plugin(self, name: str) -> PluginStorage:
        return self._spaces.setdefault(name, MemoryStorage(self._clock))


class RedisStorage(PluginStorage):
    """A namespace in Redis under ``sandrun:plugin:<name>:``; shared by every process."""

    def __init__(self, client: redis.Redis[bytes], name: str) -> None:
        self._client = client
        self.prefix = f"{KEY_PREFIX}{name}:"
        self._batch = client.register_script(_BATCH)

    @property
    def client(self) -> redis.Redis[bytes]:
        """The Redis this namespace lives in."""
        return self._client

    def raw_write(self, op: Set) -> tuple[str, str, str]:
        """``op`` as the key, the stored text and the TTL in ms ("" for none) that a
        script writing it beside something else sets (the result store does:
        :meth:`~worker.plugin.context.ResultContext.store_with_result`)."""
        px = _px(op.ttl)
        return self.prefix + op.key, _encode(op.value), "" if px is None else str(px)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return _POLICY(fn)
        except redis.RedisError as exc:
            raise StorageError(f"plugin storage {what} failed on Redis ({exc}); check that "
                               "Redis is reachable at the configured URL") from exc

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._call("get", lambda: self._client.get(self.prefix + key))
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        px, raw = _px(ttl), _encode(value)
        self._call("set", lambda: self._client.set(self.prefix + key, raw, px=px))

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", lambda: self._client.delete(self.prefix + key)))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        try:
            if ttl is None:
                return int(_POLICY(self._client.incrby, self.prefix + key, amount))
            return int(_POLICY(self._incr_expiring, self.prefix + key, amount, ttl))
        except redis.ResponseError as exc:
            raise StorageError(f"cannot incr key {key!r}: it does not hold an integer") from exc
        except redis.RedisError as exc:
            raise StorageError(f"plugin storage incr failed on Redis ({exc})") from exc

    def _incr_expiring(self, key: str, amount: int, ttl: float) -> int:
        """Create the counter with its expiry if absent, then add: one atomic round trip."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(key, 0, nx=True, px=max(1, int(ttl * 1000)))
        pipe.incrby(key, amount)
        return int(pipe.execute()[1])

    def batch(self, *ops: Op) -> list[Any]:
        """One script (:data:`_BATCH`): every operation in one atomic round trip."""
        if not ops:
            return []
        keys: list[str] = []
        args: list[str | int] = []
        for op in ops:  # bad TTLs and values are refused before anything is sent
            px = _px(getattr(op, "ttl", None))
            keys.append(self.prefix + op.key)
            args += [_OPCODES[type(op)], op.amount if isinstance(op, Incr) else
                     "" if isinstance(op, Get) else _encode(op.value), "" if px is None else px]
        try:
            replies = self._call("batch", lambda: self._batch(keys=keys, args=args))
        except StorageError as exc:
            failed = _NOT_AN_INTEGER.search(str(exc.__cause__))
            if failed is None:
                raise
            key = ops[int(failed.group(1)) - 1].key
            raise StorageError(f"cannot incr key {key!r}: it does not hold an integer") from None
        return [_batch_result(op, reply) for op, reply in zip(ops, replies, strict=True)]

    def keys(self, pattern: str = "*") -> list[str]:
        def scan() -> list[str]:
            found = self._client.scan_iter(match=self.prefix + pattern, count=500)
            return sorted(k.decode() if isinstance(k, bytes) else k for k in found)

        names: list[str] = self._call("keys", scan)
        return [k[len(self.prefix):] for k in names]


class RedisStorageBackend(StorageBackend):
    """Namespaces in one Redis database, shared across the fleet."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> RedisStorageBackend:
        """Connect lazily to ``url`` (``redis://`` or ``unix://``), with the socket options
        of every Sandrun Redis client (:func:`~worker.broker.urls.redis_socket_options`)."""
        client = redis_client(url)
        if client is None:
            raise ValueError(f"plugin storage needs a Redis URL, not {url!r}: use "
                             "redis://host:6379/0 or unix:///path/to/redis.sock")
        return cls(client)

    def for_plugin(self, name: str) -> PluginStorage:
        return RedisStorage(self._client, name)
