"""The node's live sink: a running job's output to its Redis stream, its progress to
Celery's ``PROGRESS`` state.

The sandbox tees what a job prints and reports (:mod:`worker.sandbox.live`) to the
sink this module makes, in the pool process running the job:

* output chunks go to the job's bounded stream (:class:`~worker.stores.livelogs.LiveLog`),
  which ``run.logs(follow=True)`` and ``sandrun logs -f`` read;
* a progress report is stored as the task's state, ``update_state(state="PROGRESS",
  meta=...)``, which ``run.progress()`` and ``sandrun status`` read, and sent as a
  ``task-progress`` event, which Flower shows as the task's state with the report's
  fields (when the worker sends task events).

Nothing here logs what a job printed or reported: the worker's logs never carry job
output. Without a Redis result backend there is no stream, and no sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import structlog
from celery import Task

from worker.models import Progress
from worker.node.runtime import Runtime
from worker.protocol import PROGRESS_STATE
from worker.stores.livelogs import LiveLog

log = structlog.get_logger("sandrun.live")


class JobFeed:
    """The live sink of one job attempt (a :class:`~worker.sandbox.live.LiveSink`)."""

    def __init__(self, live: LiveLog, job_id: str, task: Task[Any, Any] | None,
                 task_id: str | None) -> None:
        self.live, self.job_id, self.task, self.task_id = live, job_id, task, task_id

    def output(self, chunks: Sequence[tuple[str, bytes]]) -> None:
        """Append the chunks to the job's stream (the tee drops a sink that raises)."""
        self.live.append(self.job_id, chunks)

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
        """Mark the end of this attempt's output; a follower then waits for the result."""
        try:
            self.live.end(self.job_id)
        except redis.RedisError as exc:
            log.warning("live_output_end_not_written", job_id=self.job_id,
                        error_type=type(exc).__name__)


def job_feed(rt: Runtime, job_id: str, task: Task[Any, Any] | None = None,
             task_id: str | None = None) -> JobFeed | None:
    """The live sink for a job run by ``task`` (None: no progress state), or None when
    this worker has no Redis result backend or live output is off."""
    settings = rt.settings
    if rt.redis is None or settings.live_output_bytes == 0:
        return None
    live = LiveLog(rt.redis, settings.live_output_entries, settings.live_output_ttl)
    return JobFeed(live, job_id, task, task_id)
