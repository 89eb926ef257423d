"""Per-plugin key/value storage, namespaced by plugin name.

A plugin gets ``context.storage``: ``get``, ``set`` (optional TTL in seconds),
``delete``, ``incr`` and ``keys``. Values are anything JSON can hold; integers
are stored as their decimal text, so ``incr`` works on values written by ``set``.

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

KEY_PREFIX = "sandrun:plugin:"


def _encode(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"value of type {type(value).__name__} cannot be stored: store "
                           "JSON data (str, int, float, bool, None, list, dict)") from exc


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and ttl <= 0:
        raise StorageError(f"ttl must be a positive number of seconds, got {ttl!r}")


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


class StorageBackend(ABC):
    """Makes the storage of one plugin."""

    @abstractmethod
    def for_plugin(self, name: str) -> PluginStorage:
        """The namespace of plugin ``name``."""


class MemoryStorage(PluginStorage):
    """A process-local namespace; TTLs use an injectable clock so tests never sleep."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[str, float | None]] = {}
        self._lock = threading.Lock()
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
            return storage_policy()(fn)
        except redis.RedisError as exc:
            raise StorageError(f"plugin storage {what} failed on Redis ({exc}); check that "
                               "Redis is reachable at the configured URL") from exc

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._call("get", lambda: self._client.get(self.prefix + key))
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        raw = _encode(value)
        px = None if ttl is None else max(1, int(ttl * 1000))
        self._call("set", lambda: self._client.set(self.prefix + key, raw, px=px))

    def delete(self, key: str) -> bool:
        return bool(self._call("delete", lambda: self._client.delete(self.prefix + key)))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        _check_ttl(ttl)
        try:
            if ttl is None:
                return int(storage_policy()(self._client.incrby, self.prefix + key, amount))
            return int(storage_policy()(self._incr_expiring, self.prefix + key, amount, ttl))
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
