"""The operations of :meth:`~worker.stores.storage.PluginStorage.batch`, which runs
several storage calls as one atomic step (one round trip on Redis).

::

    record, seen = storage.batch(SetDefault("nonce:n", {"task": "t"}, ttl=60),
                                 Incr("nonce:n:1", ttl=60))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Get:
    """In a batch: the value at ``key`` (``default`` when it is missing)."""

    key: str
    default: Any = None


@dataclass(frozen=True, slots=True)
class Set:
    """In a batch: store ``value`` (expiring after ``ttl`` seconds); gives None."""

    key: str
    value: Any
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class SetDefault:
    """In a batch: store ``value`` unless ``key`` holds one; gives the value held after,
    the one already there or ``value`` (``dict.setdefault``). ``ttl`` applies to a key
    this creates."""

    key: str
    value: Any
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Incr:
    """In a batch: ``incr(key, amount, ttl)``; gives the new value."""

    key: str
    amount: int = 1
    ttl: float | None = None


#: An operation of :meth:`PluginStorage.batch`.
Op = Get | Set | SetDefault | Incr
