"""Every result a worker stores, seen as it is stored, and the tally of a scenario.

Celery's Redis backend publishes each stored task state on the channel named
after its key (``celery-task-meta-<id>``). :class:`ResultWatch` subscribes to
all of them from a thread and keeps, per task, the final states (``SUCCESS``,
``FAILURE``) with the time they were seen; it reconnects when the server goes
away (a restart test; a result stored before it is back is known only from the
final read). :func:`tally` joins that with the side-effect ledger.

What counts (the reliability tier's definitions):

* **completed**: the job's final result is the one the scenario expects;
* **lost**: submitted, but no such final result by the deadline;
* **duplicated**: the job got two *different* final results (the same result
  stored again, as a worker does when it finds a job already finished, is one
  result), or a run of its body *started* after its first final result was
  stored (a finished job ran again). A run killed before its result was
  stored may legitimately run again: at-least-once delivery.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.support.ledger import Ledger
from worker.models import JobResult

PREFIX = "celery-task-meta-"
FINAL = frozenset({"SUCCESS", "FAILURE"})


@dataclass(frozen=True)
class Stored:
    """One final state stored for a task, as seen by the watcher."""

    seen: float
    status: str
    result: str  # canonical JSON of the stored result


class ResultWatch:
    """Subscribes to every stored task state until ``close``."""

    def __init__(self, connect: Callable[[], redis.Redis[bytes]]) -> None:
        self._connect = connect
        self.stored: dict[str, list[Stored]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="result-watch", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(30):
            raise AssertionError("the result watcher could not subscribe")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                client = self._connect()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(f"{PREFIX}*")
                self._subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None:
                        self._seen(message)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.02)

    def _seen(self, message: dict[str, Any]) -> None:
        meta = json.loads(message["data"])
        if meta.get("status") in FINAL:
            task_id = message["channel"].decode().removeprefix(PREFIX)
            entry = Stored(time.time(), meta["status"],
                           json.dumps(meta.get("result"), sort_keys=True))
            with self._lock:
                self.stored[task_id].append(entry)

    def of(self, task_id: str) -> list[Stored]:
        with self._lock:
            return list(self.stored.get(task_id, ()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Tally:
    """A scenario's counts, and the details behind any non-zero lost or duplicated."""

    submitted: int
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    reruns: int = 0  # killed runs that ran again (allowed)

    def explain(self) -> str:
        return f"lost: {self.lost}\nduplicated: {self.duplicated}"


def duplicate_reason(job_id: str, final: Any, watch: ResultWatch, ledger: Ledger) -> str | None:
    """Why ``job_id`` counts as duplicated, or None (``final``: the stored result at the
    end, as stored)."""
    stored = watch.of(job_id)
    distinct = {s.result for s in stored}
    if final is not None:
        distinct.add(json.dumps(final, sort_keys=True))
    if len(distinct) > 1:
        return f"{job_id}: {len(distinct)} different final results stored"
    if stored:
        first = min(s.seen for s in stored)
        late = [r for r in ledger.of(job_id) if r.started > first]
        if late:
            return f"{job_id}: {len(late)} run(s) started after its result was stored"
    return None


def tally(finals: Mapping[str, Any], expected: Callable[[JobResult], bool],
          watch: ResultWatch, ledger: Ledger) -> Tally:
    """Count a scenario: ``finals`` maps every submitted job id to its stored final
    result (the JSON form), or None if it had none by the deadline."""
    counts = Tally(submitted=len(finals))
    for job_id, final in finals.items():
        if final is not None and expected(JobResult.model_validate(final)):
            counts.completed += 1
        else:
            counts.lost.append(f"{job_id}: {final!r}"[:500])
        reason = duplicate_reason(job_id, final, watch, ledger)
        if reason:
            counts.duplicated.append(reason)
        counts.reruns += max(0, len(ledger.of(job_id)) - 1)
    return counts
