"""Entries for a Redis stream, written by someone other than their producer.

A job's live output (:mod:`worker.stores.livelogs`) is appended by the pool process that
runs it, but a short job's last output and the stream's end marker ride in the script
that stores the job's result (:mod:`worker.broker.resultstore`). :class:`StreamAppend`
is what one hands the other; it lives here, below both, and imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StreamAppend:
    """Entries to append to stream ``key`` (each a sequence of field/value pairs, trimmed
    to about ``maxlen`` entries), whose TTL is then set to ``ttl`` seconds."""

    key: str
    maxlen: int
    ttl: int
    entries: tuple[tuple[tuple[str, str | bytes | memoryview], ...], ...]

    def queue_on(self, pipe: Any) -> None:
        """Queue the appends and the TTL on redis-py pipeline ``pipe`` (the caller runs
        it): what a writer that is not the result store's script sends."""
        for fields in self.entries:
            pipe.xadd(self.key, dict(fields), maxlen=self.maxlen, approximate=True)
        pipe.expire(self.key, self.ttl)
