"""Following a job's output while it runs: ``run.logs(follow=True)``.

The worker appends what the job prints to the job's live stream
(:mod:`worker.stores.livelogs`) as it runs; :func:`follow` reads it from the oldest
entry kept, waiting for new ones, splits it into lines per stream and yields each as
soon as its newline arrives. It ends once the job has a final result: an ``end``
entry, or a stream quiet for :data:`IDLE_MS`, makes it look, and once the result is
stored every entry of the attempt that made it is in the stream already (the worker
writes them before it stores the result), so one last read drains it. A job whose
stream never had an entry (finished and expired, or a result backend without
streams) yields the result's stdout and stderr instead.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import redis

from worker.errors import BrokerUnavailable, WaitTimeout
from worker.models import JobResult
from worker.stores.livelogs import END, LiveEntry, LiveLog

IDLE_MS = 500
#: A line longer than this is yielded in pieces, so a job printing without newlines
#: costs the follower bounded memory.
MAX_LINE_CHARS = 64 << 10
STREAM_NAMES = {"out": "stdout", "err": "stderr", "note": "sandrun"}


class LogLine(NamedTuple):
    """One line a job printed: ``stream`` is ``stdout``, ``stderr``, or ``sandrun`` (a
    note of the worker's about the stream); ``text`` keeps its newline (the last line of
    a stream may have none)."""

    stream: str
    text: str


class _Lines:
    """Cuts one stream's bytes into lines, decoding UTF-8 across chunk boundaries."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        parts = (self._partial + self._decoder.decode(data)).split("\n")
        self._partial = parts.pop()
        lines = [part + "\n" for part in parts]
        while len(self._partial) > MAX_LINE_CHARS:
            lines.append(self._partial[:MAX_LINE_CHARS])
            self._partial = self._partial[MAX_LINE_CHARS:]
        return lines

    def rest(self) -> str:
        rest, self._partial = self._partial + self._decoder.decode(b"", final=True), ""
        return rest


class _Reader:
    """The entries of one job's stream, as lines, resuming after the last one read."""

    def __init__(self, live: LiveLog, job_id: str) -> None:
        self.live, self.job_id = live, job_id
        self.after, self.seen = "0-0", False
        self.streams: dict[str, _Lines] = {}

    def read(self, block_ms: int | None) -> tuple[list[LogLine], bool, bool]:
        """Lines of the next entries, whether any came, and whether one was ``end``."""
        try:
            entries = self.live.read(self.job_id, self.after, block_ms)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"cannot read the live output of job {self.job_id}: "
                                    f"{exc}; check SANDRUN_RESULT_BACKEND") from exc
        return self._lines(entries), bool(entries), any(e.kind == END for e in entries)

    def _lines(self, entries: list[LiveEntry]) -> list[LogLine]:
        lines = []
        for entry in entries:
            self.after = entry.id
            name = STREAM_NAMES.get(entry.kind)
            if name is None:  # end, or a kind of a later release
                continue
            self.seen = True
            if name == "sandrun":
                lines.append(LogLine(name, entry.data.decode("utf-8", "replace") + "\n"))
                continue
            cutter = self.streams.setdefault(name, _Lines())
            lines += [LogLine(name, text) for text in cutter.feed(entry.data)]
        return lines

    def rest(self) -> list[LogLine]:
        """The unfinished last line of each stream."""
        return [LogLine(name, text) for name, cutter in self.streams.items()
                if (text := cutter.rest())]


def follow(live: LiveLog, job_id: str, result_of: Callable[[], JobResult | None],
           timeout: float | None = None, clock: Callable[[], float] = time.monotonic
           ) -> Iterator[LogLine]:
    """Yield the lines job ``job_id`` prints as they arrive, until it has a final result
    (``result_of``); raise WaitTimeout when it has none after ``timeout`` seconds."""
    reader = _Reader(live, job_id)
    deadline = None if timeout is None else clock() + timeout
    while True:
        lines, came, ended = reader.read(IDLE_MS)
        yield from lines
        if not came or ended:
            result = result_of()
            if result is not None:
                yield from _drain(reader, result)
                return
        if deadline is not None and clock() > deadline:
            raise WaitTimeout(f"job {job_id} did not finish within {timeout}s; follow "
                              "longer or check the workers")


def _drain(reader: _Reader, result: JobResult) -> Iterator[LogLine]:
    """The entries left in the stream of a finished job, or its result's output."""
    while True:
        lines, came, _ = reader.read(None)
        yield from lines
        if not came:
            break
    yield from reader.rest()
    if not reader.seen:
        yield from result_lines(result)


def result_lines(result: JobResult) -> Iterator[LogLine]:
    """A finished job's stdout, then its stderr, as lines (no stream to follow)."""
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        for line in text.splitlines(keepends=True):
            yield LogLine(name, line)
