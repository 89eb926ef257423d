"""The node's live sink: a running job's output to its Redis stream, its progress to
Celery's ``PROGRESS`` state.

The sandbox tees what a job prints and reports (:mod:`worker.sandbox.live`) to the
sink this module makes, in the pool process running the job:

* output chunks go to the job's bounded stream (:class:`~worker.stores.livelogs.LiveLog`),
  which ``run.logs(follow=True)`` and ``sandrun logs -f`` read, written by a thread
  of the pool process so that the pump never waits on Redis; the chunks are views of
  an arena (:mod:`worker.sandbox.arena`) the sink leases for the job and recycles only
  once the writer has sent them all;
* a progress report is stored as the task's state, ``update_state(state="PROGRESS",
  meta=...)``, which ``run.progress()`` and ``sandrun status`` read, and sent as a
  ``task-progress`` event, which Flower shows as the task's state with the report's
  fields (when the worker sends task events).

Nothing here logs what a job printed or reported: the worker's logs never carry job
output. Without a Redis result backend there is no stream, and no sink.
"""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import structlog
from celery import Task

from worker.models import Progress
from worker.node import resultwrites
from worker.node.runtime import Runtime
from worker.protocol import PROGRESS_STATE
from worker.sandbox.arena import Arena, lease
from worker.sandbox.live import FLUSH_BYTES, Data
from worker.stores.livelogs import END, LiveLog

END_WAIT_SECONDS = 30.0  # for the writer to send what is queued when the job ends
WRITE_SECONDS = 0.1  # between two writes of one job's stream
#: At most this much held output, in this many entries, rides in the script that stores
#: the result (a copy of it is passed to Redis as the script's arguments); more is
#: written before the result.
WITH_RESULT_BYTES = 64 << 10
WITH_RESULT_ENTRIES = 64
log = structlog.get_logger("sandrun.live")


class _Writer:
    """Appends a job's output chunks to its stream off the thread that pumps the job's
    pipes, so that a round trip to Redis never keeps the pump from reading.

    It writes what is queued when it starts, then wakes every :data:`WRITE_SECONDS` (at
    once when the job has ended, :meth:`finish`) and writes everything queued by then in
    one round trip: a job printing as fast as it can does not share its CPU with a round
    trip per batch. The queue is bounded by the tee's budget.
    A Redis error stops the writes for the rest of the job (logged once, without the
    output).

    The thread is started with :func:`_thread.start_new_thread`, not
    :class:`threading.Thread`, whose ``start`` blocks until the new thread has been
    scheduled and has run: on a busy host that held the pump, mid-job, for milliseconds
    while the job's pipe filled (a job printing 10 MB in 64 KiB writes ran 8-20% slower;
    ``benchmarks/logs.py``). This one starts without waiting; :meth:`finish` waits for
    it to have written what is queued and stopped."""

    def __init__(self, live: LiveLog, job_id: str) -> None:
        self.live, self.job_id = live, job_id
        self.queue: queue.SimpleQueue[list[tuple[str, Data]] | None] = queue.SimpleQueue()
        self.failed = False
        self._hurry = threading.Event()
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start the thread, without waiting for it to run."""
        _thread.start_new_thread(self._run, ())

    def finish(self, timeout: float) -> bool:
        """Write what is queued now and the end of the output, in one round trip, and stop;
        whether everything was written in time."""
        self.queue.put([(END, b"")])
        self.queue.put(None)
        self._hurry.set()
        return self._stopped.wait(timeout) and not self.failed

    def _run(self) -> None:
        try:
            done = False
            while not done:
                batch = []
                while not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                done = None in batch
                chunks = [chunk for item in batch if item is not None for chunk in item]
                if chunks and not self.failed:
                    self._append(chunks)
                if not done:
                    # wake on a timer, not per batch: a thread woken for every batch would
                    # take the GIL from the pump each time, and the pump keeps the pipes empty
                    self._hurry.wait(WRITE_SECONDS)
        except Exception as exc:  # never the pool process's end; the follower misses output
            self.failed = True
            log.warning("live_output_dropped", job_id=self.job_id,
                        error_type=type(exc).__name__)
        finally:
            self._stopped.set()

    def _append(self, chunks: list[tuple[str, Data]]) -> None:
        try:
            self.live.append(self.job_id, chunks)
        except redis.RedisError as exc:
            self.failed = True
            log.warning("live_output_dropped", job_id=self.job_id,
                        error_type=type(exc).__name__)


class JobFeed:
    """The live sink of one job attempt (a :class:`~worker.sandbox.live.LiveSink`)."""

    def __init__(self, live: LiveLog, job_id: str, task: Task[Any, Any] | None,
                 task_id: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.live, self.job_id, self.task, self.task_id = live, job_id, task, task_id
        self.clock = clock
        self._writer: _Writer | None = None
        self._arena: Arena | None = None
        self._held: list[tuple[str, Data]] = []  # output before the writer started
        self._first: float | None = None  # when the first output came

    def arena(self) -> Arena:
        """This process's arena, for this job (recycled at :meth:`end`)."""
        if self._arena is None:
            self._arena = lease()
        return self._arena

    def output(self, chunks: Sequence[tuple[str, Data]], last: bool = False) -> None:
        """Queue the chunks for the job's stream (written by a thread of this process).

        The thread starts with the job's first output, so that it never exists when the
        launcher is forked (a fork copies no thread, but would copy a lock one holds),
        unless the job is printing fast (a hand-over of ``FLUSH_BYTES`` or more): then
        the output is held until it has printed for :data:`WRITE_SECONDS`, paused (the
        tee says so) or ended, since starting a thread mid-burst costs the pump more
        than writing it all at the end (``benchmarks/logs.py``). A follower sees a burst
        at most :data:`WRITE_SECONDS` plus twice the tee's ``FLUSH_SECONDS`` (0.2 s)
        after its first byte, 0.05 s later than a writer started at its first output
        (the writer writes at once when it starts, then every :data:`WRITE_SECONDS`).
        The ``last`` output of a job whose writer never started is held too: :meth:`end`
        sends all of it with the end, in one round trip, and no thread ever starts (what
        most short jobs cost)."""
        if self._writer is not None:
            if chunks:
                self._writer.queue.put(list(chunks))
            return
        now = self.clock()
        self._first = now if self._first is None else self._first
        self._held.extend(chunks)
        burst = sum(len(data) for _, data in chunks) >= FLUSH_BYTES
        if last or not self._held or (burst and now - self._first < WRITE_SECONDS):
            return
        writer = _Writer(self.live, self.job_id)
        writer.queue.put(self._held)
        writer.start()  # one that cannot start raises: the tee drops this sink
        self._writer, self._held = writer, []

    def progress(self, report: Progress) -> None:
        """Store the report as the task's PROGRESS state, and tell Flower."""
        if self.task is None or self.task_id is None:
            return
        meta = report.model_dump(mode="json")
        self.task.update_state(task_id=self.task_id, state=PROGRESS_STATE, meta=meta)
        if self.task.app.conf.worker_send_task_events:
            try:
                self.task.send_event("task-progress", retry=False, **meta)
            except Exception as exc:  # Flower's view only; the state is stored already
                log.debug("progress_event_not_sent", job_id=self.job_id,
                          error_type=type(exc).__name__)

    def end(self) -> None:
        """Write what is queued, then mark the end of this attempt's output (a follower
        then waits for the result). Output a writer never sent (a short job's) goes with
        the end in the script that stores the result, when our result store stores it
        in the same Redis (:func:`~worker.node.resultwrites.hand_over_stream`), else now:
        either way, a follower who sees the result has seen every entry."""
        writer, self._writer = self._writer, None
        arena, self._arena = self._arena, None
        held, self._held = self._held, []
        if writer is not None:  # it writes the end with what is queued
            if writer.finish(END_WAIT_SECONDS) and arena is not None:
                arena.recycle()  # no thread holds a view of it any more
            return  # else the arena is dropped: a writer still sending may hold views of it
        entries = [*held, (END, b"")]
        try:  # never started: all of it and the end in one round trip, with the result
            if not self._with_result(entries):
                self.live.append(self.job_id, entries)
        except redis.RedisError as exc:
            log.warning("live_output_dropped" if held else "live_output_end_not_written",
                        job_id=self.job_id, error_type=type(exc).__name__)
        finally:
            if arena is not None:
                arena.recycle()  # no thread holds a view of it any more


    def _with_result(self, entries: list[tuple[str, Data]]) -> bool:
        """Hand ``entries`` to the result store, if they are few and small enough to be
        the arguments of its script (a job printing to both streams in turn makes an
        entry per switch) and it stores the result in this stream's Redis."""
        if len(entries) > WITH_RESULT_ENTRIES or \
                sum(len(data) for _, data in entries) > WITH_RESULT_BYTES:
            return False
        return resultwrites.hand_over_stream(self.task, self.live.client,
                                             lambda: self.live.entries(self.job_id, entries))


def job_feed(rt: Runtime, job_id: str, task: Task[Any, Any] | None = None,
             task_id: str | None = None) -> JobFeed | None:
    """The live sink for a job run by ``task`` (None: no progress state), or None when
    this worker has no Redis result backend or live output is off."""
    settings = rt.settings
    if rt.redis is None or settings.live_output_bytes == 0:
        return None
    live = LiveLog(rt.redis, settings.live_output_entries, settings.live_output_ttl)
    return JobFeed(live, job_id, task, task_id)
