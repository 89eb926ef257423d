"""Live output: what a running job prints and reports, handed on while it runs.

The pool process that pumps the job's pipes (:mod:`worker.sandbox.capture`) tees what it
reads into a :class:`Tee`, which batches it for a :class:`LiveSink` that the node side
passes in (the sandbox wing knows nothing of Redis or Celery). Batching is what keeps
streaming cheap: output is handed on when :data:`FLUSH_BYTES` have gathered or
:data:`FLUSH_SECONDS` after the first unsent byte, in chunks of at most
:data:`CHUNK_BYTES`, so a job printing a line per millisecond costs about twenty
hand-overs a second, not a thousand (and the node's sink writes them to Redis from a
thread of its own, :mod:`worker.node.livefeed`). When the sink lends an arena
(:mod:`worker.sandbox.arena`), the pump reads the job's output straight into it
(:meth:`Tee.space`, :meth:`Tee.took`) and the chunks are views of it, joined while they
are adjacent: keeping 10 MB costs no allocation, copy or page fault. Progress reports
(:mod:`worker.sandbox.progress`) are handed on at most every :data:`PROGRESS_SECONDS`
(the latest wins) and once more at the end. After a hand-over forced by size the sink
hears once more, with nothing, if the job then pauses: a sink may hold back output
while the job prints fast (the node's does, not to start its writer mid-burst).

A job may print without end: after ``budget`` bytes the tee hands on one ``note`` and
then nothing more (the result still keeps the first ``stream_cap_bytes`` of each
stream). A sink that raises is dropped for the rest of the job: live output is a view,
and the job runs on without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from worker.models import Progress
from worker.sandbox.arena import Arena
from worker.sandbox.progress import ProgressReader

FLUSH_BYTES = 256 << 10
FLUSH_SECONDS = 0.05
CHUNK_BYTES = 64 << 10
PROGRESS_SECONDS = 0.5
BUDGET_NOTE = "live output stopped after {budget} bytes; the result keeps the first part"
log = structlog.get_logger("sandrun.sandbox")
Data = bytes | memoryview  # a chunk handed on: bytes, or a view of the sink's arena


class LiveSink(Protocol):
    """Where a running job's output and progress go (the node side implements it)."""

    def output(self, chunks: Sequence[tuple[str, Data]], last: bool = False) -> None:
        """Hand on ``(stream, data)`` chunks in the order the job wrote them; ``stream``
        is ``out``, ``err`` or ``note`` (a line of the worker's own, about the stream).
        A view of the arena is valid until the sink recycles the arena. A hand-over of
        :data:`FLUSH_BYTES` or more means the job is printing fast and more follows
        soon: if nothing does, an empty one comes :data:`FLUSH_SECONDS` later. ``last``:
        the job has ended and nothing follows (a sink may send it with its end)."""

    def arena(self) -> Arena | None:
        """Memory for the tee to read the job's output into, which the sink recycles only
        once it has sent every chunk (None: the tee keeps bytes of its own)."""

    def progress(self, report: Progress) -> None:
        """Hand on the job's latest progress report."""


class Tee:
    """Batches one job's output and progress for a :class:`LiveSink` (see the module
    docstring); ``clock`` is injected so that tests control time."""

    def __init__(self, sink: LiveSink, budget: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink: LiveSink | None = sink
        self.budget, self.clock = budget, clock
        self.sent = 0  # output bytes handed on or pending, against the budget
        try:
            self._arena = sink.arena()
        except Exception as exc:  # no arena (no memory to map): the tee keeps bytes
            log.warning("live_arena_unavailable", error_type=type(exc).__name__)
            self._arena = None
        self._pending: list[tuple[str, bytes | bytearray | memoryview]] = []
        self._run: tuple[int, int] | None = None  # the arena span of the last piece
        self._pending_bytes = 0
        self._since: float | None = None  # when the oldest pending byte arrived
        self._nudge_at: float | None = None  # when to tell the sink the job paused
        self._reader = ProgressReader()
        self._report: Progress | None = None  # read, not yet handed on
        self._reported_at = float("-inf")

    def output(self, stream: str, chunk: bytes) -> None:
        """Take ``chunk`` the job wrote on ``stream`` (``out`` or ``err``)."""
        if self.sink is None or self.sent >= self.budget:
            return
        self._taken(stream, chunk[:self.budget - self.sent], len(chunk))

    def space(self, limit: int) -> memoryview | None:
        """Where the pump may read up to ``limit`` bytes of output (then :meth:`took`), or
        None: it reads them as bytes and gives them to :meth:`output`."""
        if self.sink is None or self._arena is None or self.sent >= self.budget:
            return None
        return self._arena.space(min(limit, self.budget - self.sent))

    def took(self, stream: str, count: int) -> None:
        """``count`` bytes from ``stream`` were read into the last :meth:`space`."""
        if self._arena is not None and count > 0:
            span = self._arena.keep(count)
            self._taken(stream, self._arena.view(span), count, span)

    def _taken(self, stream: str, data: Data, count: int,
               span: tuple[int, int] | None = None) -> None:
        """Queue ``data``, the part within the budget of ``count`` bytes the job wrote."""
        room = self.budget - self.sent
        self._add(stream, data, span)
        if count >= room:
            self._add("note", BUDGET_NOTE.format(budget=self.budget).encode())
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()
            self._nudge_at = self.clock() + FLUSH_SECONDS

    def progress(self, chunk: bytes) -> None:
        """Take bytes the job wrote on its progress descriptor."""
        report = self._reader.feed(chunk)
        if report is not None and self.sink is not None:
            self._report = report
            self.tick()

    def due(self) -> float | None:
        """When :meth:`tick` has something to hand on (a ``clock`` time), or None."""
        times = [self._since + FLUSH_SECONDS] if self._since is not None else []
        if self._nudge_at is not None:
            times.append(self._nudge_at)
        if self._report is not None:
            times.append(self._reported_at + PROGRESS_SECONDS)
        return min(times) if times else None

    def tick(self) -> None:
        """Hand on what is due."""
        now = self.clock()
        if self._since is not None and now >= self._since + FLUSH_SECONDS:
            self._flush()
        if self._nudge_at is not None and now >= self._nudge_at:
            self._nudge_at = None
            self._call(lambda sink: sink.output([]))
        if self._report is not None and now >= self._reported_at + PROGRESS_SECONDS:
            self._send_report(now)

    def close(self) -> None:
        """The job ended: hand on everything still pending, as the last output."""
        self._flush(last=True)
        if self._report is not None:
            self._send_report(self.clock())

    def _add(self, stream: str, data: Data, span: tuple[int, int] | None = None) -> None:
        """Queue ``data`` (at ``span`` of the arena, when it is there): small pieces of one
        stream are merged up to a chunk (adjacent views of the arena without a copy), a
        large read is kept as it came (no copy: the pump's buffer becomes the chunk)."""
        if not data:
            return
        if self._since is None:
            self._since = self.clock()
        if stream != "note":
            self.sent += len(data)
        self._pending_bytes += len(data)
        last = self._pending[-1] if self._pending and self._pending[-1][0] == stream else None
        if last is None or not self._merge(stream, last[1], data, span):
            self._pending.append((stream, data))
            self._run = span

    def _merge(self, stream: str, last: bytes | bytearray | memoryview, data: Data,
               span: tuple[int, int] | None) -> bool:
        """Merge ``data`` into the last pending piece of its stream, if it fits a chunk."""
        run = self._run
        if span is not None and run is not None and self._arena is not None:
            if run[1] != span[0] or span[1] - run[0] > CHUNK_BYTES:
                return False
            self._run = (run[0], span[1])
            self._pending[-1] = (stream, self._arena.view(self._run))
            return True
        if span is not None or isinstance(last, memoryview):
            return False
        if len(last) + len(data) > CHUNK_BYTES:
            return False
        merged = last if isinstance(last, bytearray) else bytearray(last)
        merged.extend(data)
        self._pending[-1] = (stream, merged)
        return True

    def _flush(self, last: bool = False) -> None:
        pending, self._pending, self._pending_bytes, self._since = self._pending, [], 0, None
        self._run = self._nudge_at = None
        chunks: list[tuple[str, Data]] = [
            (stream, data[i:i + CHUNK_BYTES] if isinstance(data, memoryview)
             else bytes(data[i:i + CHUNK_BYTES]))
            for stream, data in pending for i in range(0, len(data), CHUNK_BYTES)]
        if chunks:
            self._call(lambda sink: sink.output(chunks, last))

    def _send_report(self, now: float) -> None:
        report, self._report, self._reported_at = self._report, None, now
        if report is not None:
            self._call(lambda sink: sink.progress(report))

    def _call(self, give: Callable[[LiveSink], None]) -> None:
        if self.sink is None:
            return
        try:
            give(self.sink)
        except Exception as exc:  # a view of the job: never the job's end
            log.warning("live_output_dropped", error_type=type(exc).__name__)
            self.sink = None
