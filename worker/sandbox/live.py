"""Live output: what a running job prints and reports, handed on while it runs.

The pool process that pumps the job's pipes (:mod:`worker.sandbox.capture`) tees what it
reads into a :class:`Tee`, which batches it for a :class:`LiveSink` that the node side
passes in (the sandbox wing knows nothing of Redis or Celery). Batching is what keeps
streaming cheap: output is handed on when :data:`FLUSH_BYTES` have gathered or
:data:`FLUSH_SECONDS` after the first unsent byte, in chunks of at most
:data:`CHUNK_BYTES`, so a job printing a line per millisecond costs about twenty
hand-overs a second, not a thousand (and the node's sink writes them to Redis from a
thread of its own, :mod:`worker.node.livefeed`). Progress reports
(:mod:`worker.sandbox.progress`) are handed on at most every :data:`PROGRESS_SECONDS`
(the latest wins) and once more at the end.

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
from worker.sandbox.progress import ProgressReader

FLUSH_BYTES = 256 << 10
FLUSH_SECONDS = 0.05
CHUNK_BYTES = 64 << 10
PROGRESS_SECONDS = 0.5
BUDGET_NOTE = "live output stopped after {budget} bytes; the result keeps the first part"
log = structlog.get_logger("sandrun.sandbox")


class LiveSink(Protocol):
    """Where a running job's output and progress go (the node side implements it)."""

    def output(self, chunks: Sequence[tuple[str, bytes]]) -> None:
        """Hand on ``(stream, data)`` chunks in the order the job wrote them; ``stream``
        is ``out``, ``err`` or ``note`` (a line of the worker's own, about the stream)."""

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
        self._pending: list[tuple[str, bytes | bytearray]] = []
        self._pending_bytes = 0
        self._since: float | None = None  # when the oldest pending byte arrived
        self._reader = ProgressReader()
        self._report: Progress | None = None  # read, not yet handed on
        self._reported_at = float("-inf")

    def output(self, stream: str, chunk: bytes) -> None:
        """Take ``chunk`` the job wrote on ``stream`` (``out`` or ``err``)."""
        if self.sink is None or self.sent >= self.budget:
            return
        room = self.budget - self.sent
        self._add(stream, chunk[:room])
        if len(chunk) >= room:
            self._add("note", BUDGET_NOTE.format(budget=self.budget).encode())
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def progress(self, chunk: bytes) -> None:
        """Take bytes the job wrote on its progress descriptor."""
        report = self._reader.feed(chunk)
        if report is not None and self.sink is not None:
            self._report = report
            self.tick()

    def due(self) -> float | None:
        """When :meth:`tick` has something to hand on (a ``clock`` time), or None."""
        times = [self._since + FLUSH_SECONDS] if self._since is not None else []
        if self._report is not None:
            times.append(self._reported_at + PROGRESS_SECONDS)
        return min(times) if times else None

    def tick(self) -> None:
        """Hand on what is due."""
        now = self.clock()
        if self._since is not None and now >= self._since + FLUSH_SECONDS:
            self._flush()
        if self._report is not None and now >= self._reported_at + PROGRESS_SECONDS:
            self._send_report(now)

    def close(self) -> None:
        """The job ended: hand on everything still pending."""
        self._flush()
        if self._report is not None:
            self._send_report(self.clock())

    def _add(self, stream: str, data: bytes) -> None:
        """Queue ``data``: small pieces of one stream are merged up to a chunk, a large
        read is kept as it came (no copy: the pump's buffer becomes the chunk)."""
        if not data:
            return
        if self._since is None:
            self._since = self.clock()
        if stream != "note":
            self.sent += len(data)
        self._pending_bytes += len(data)
        last = self._pending[-1] if self._pending else None
        if last is not None and last[0] == stream and len(last[1]) + len(data) <= CHUNK_BYTES:
            merged = last[1] if isinstance(last[1], bytearray) else bytearray(last[1])
            merged.extend(data)
            self._pending[-1] = (stream, merged)
        else:
            self._pending.append((stream, data))

    def _flush(self) -> None:
        pending, self._pending, self._pending_bytes, self._since = self._pending, [], 0, None
        chunks = [(stream, bytes(data[i:i + CHUNK_BYTES])) for stream, data in pending
                  for i in range(0, len(data), CHUNK_BYTES)]
        if chunks:
            self._call(lambda sink: sink.output(chunks))

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
