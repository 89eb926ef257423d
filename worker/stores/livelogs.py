"""Live output of running jobs: one bounded Redis stream per job.

Why a stream: a follower resumes from the last entry id it saw (``XREAD``), several
followers read the same entries, and ``XADD ... MAXLEN ~ N`` keeps it bounded at
little cost. The key is ``sandrun:live:<job id>``: per job, never shared, and given
a TTL at every write, so a stream outlives its job by at most that long and a job
that never ends cannot keep one forever. Each entry is ``{k: kind, d: data}``, the
kind being ``out`` or ``err`` (a chunk of at most ``worker.sandbox.live.CHUNK_BYTES``
the job printed), ``note`` (a line of the worker's own, such as the budget being
spent) or ``end`` (this attempt's output is complete; the job's result follows).

The worker writes (``append``, ``end``) from the pool process running the job; the
client reads (``read``). Entries are trimmed oldest first: a follower that falls
more than ``max_entries`` behind misses the oldest, and the result still holds the
first ``stream_cap_bytes`` of each stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from worker.broker.streamwrites import StreamAppend

LIVE_PREFIX = "sandrun:live:"
LIVE_ENTRIES = 1000
LIVE_TTL_SECONDS = 3600
END = "end"


@dataclass(frozen=True, slots=True)
class LiveEntry:
    """One entry of a job's live stream."""

    id: str
    kind: str
    data: bytes


def live_key(job_id: str) -> str:
    """The stream of ``job_id``."""
    return f"{LIVE_PREFIX}{job_id}"


class LiveLog:
    """The live streams of jobs in one Redis (the result backend's)."""

    def __init__(self, client: redis.Redis[bytes], max_entries: int = LIVE_ENTRIES,
                 ttl: int = LIVE_TTL_SECONDS) -> None:
        self.client, self.max_entries, self.ttl = client, max_entries, ttl

    def append(self, job_id: str, chunks: Sequence[tuple[str, bytes | memoryview]]) -> None:
        """Add ``(kind, data)`` chunks in order, trim and renew the TTL: one round trip."""
        pipe = self.client.pipeline(transaction=False)
        self._stream(job_id, chunks).queue_on(pipe)
        pipe.execute()

    def entries(self, job_id: str, chunks: Sequence[tuple[str, bytes | memoryview]]
                ) -> StreamAppend:
        """What :meth:`append` would write, for another writer to write (the result
        store, in the script that stores the job's result); the data is copied."""
        return self._stream(job_id, [(kind, bytes(data)) for kind, data in chunks])

    def _stream(self, job_id: str, chunks: Sequence[tuple[str, bytes | memoryview]]
                ) -> StreamAppend:
        return StreamAppend(live_key(job_id), self.max_entries, self.ttl,
                            tuple((("k", kind), ("d", data)) for kind, data in chunks))

    def end(self, job_id: str) -> None:
        """Mark the end of this attempt's output (a follower then looks for the result)."""
        self.append(job_id, [(END, b"")])

    def read(self, job_id: str, after: str, block_ms: int | None = None,
             count: int = 256) -> list[LiveEntry]:
        """Up to ``count`` entries after entry id ``after`` (``"0-0"``: from the oldest
        kept), waiting up to ``block_ms`` for one when there is none (None: not at all)."""
        found = self.client.xread({live_key(job_id): after}, count=count,
                                  block=block_ms if block_ms else None)
        entries = []
        for _, items in found or ():
            for entry_id, fields in items:
                ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                kind = fields.get(b"k", b"").decode("ascii", "replace")
                entries.append(LiveEntry(ident, kind, fields.get(b"d", b"")))
        return entries
