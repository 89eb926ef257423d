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
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import redis

from worker.broker.policies import storage_policy
from worker.errors import StorageError
from worker.stores.ops import Get, Incr, Op, Set, SetDefault

KEY_PREFIX = "sandrun:plugin:"
#: One policy object for every call: tenacity keeps its per-call state per thread, and
#: building a policy costs as much as the Redis call it guards.
_POLICY = storage_policy()
_MISSING = object()


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
        """One MULTI/EXEC: every operation in one atomic round trip."""
        queued = [(op, _px(getattr(op, "ttl", None)),
                   _encode(op.value) if isinstance(op, Set | SetDefault) else "")
                  for op in ops]  # refuse bad TTLs and values before anything is sent

        def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            for op, px, raw in queued:
                key = self.prefix + op.key
                if isinstance(op, Get):
                    pipe.get(key)
                elif isinstance(op, Set):
                    pipe.set(key, raw, px=px)
                elif isinstance(op, SetDefault):
                    pipe.set(key, raw, nx=True, px=px).get(key)
                else:
                    if px is not None:  # as incr: a key this creates gets the expiry
                        pipe.set(key, 0, nx=True, px=px)
                    pipe.incrby(key, op.amount)
            return list(pipe.execute(raise_on_error=False))

        replies = self._call("batch", run)
        return [self._result(op, px, replies) for op, px, _ in queued]

    @staticmethod
    def _result(op: Op, px: int | None, replies: list[Any]) -> Any:
        """The result of ``op``, taken from the front of the batch's ``replies``."""
        if isinstance(op, SetDefault) or (isinstance(op, Incr) and px is not None):
            replies.pop(0)  # the SET's own reply
        reply = replies.pop(0)
        if isinstance(reply, redis.ResponseError):
            raise StorageError(f"cannot incr key {op.key!r}: it does not hold an integer")
        if isinstance(op, Incr):
            return int(reply)
        if isinstance(op, Set):
            return None
        default = op.default if isinstance(op, Get) else None
        return default if reply is None else json.loads(reply)

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
        """Connect lazily to ``url`` (``redis://`` or ``unix://``)."""
        return cls(redis.Redis.from_url(url))

    def for_plugin(self, name: str) -> PluginStorage:
        return RedisStorage(self._client, name)
