"""The worker's main process keeps the running leases of the jobs its pool runs.

Every third of ``SANDRUN_RUNNING_LEASE_SECONDS`` (the ttl), one call renews the lease
of every job the pool runs and releases those of jobs that ended without releasing
their own (a pool process that died, a release Redis refused): one round trip per
worker, whatever its concurrency, none in the pool process, so nothing competes with
a job's output pumping there (:mod:`worker.stores.leases` has the scripts).

A worker that cannot renew a job's lease for long enough fences itself: once the
lease may lapse before the next renewal could land, it ends the pool process that runs
the job, if that process still runs it (:mod:`worker.node.fencing`: the process ends
itself with SIGTERM, as a cancel does: the job's process tree goes with it). Celery sees a
lost worker process: the message goes back to the queue (``task_reject_on_worker_lost``)
and nothing is stored. So while a delivery runs, its lease is live, and two deliveries
never run a job at the same time:

* a worker cut off from Redis for less than the ttl keeps its lease; a copy that the
  broker hands out meanwhile waits, then finds the stored result: the job runs once;
* cut off for longer, it stops the job at ``ttl - margin`` (:attr:`Keeper.fence_after`)
  after its last renewal that Redis took, before the lease lapses; a copy then takes
  the lease and runs the job again. The first SUCCESS stored is kept (the result store
  does not overwrite one), so a result the fenced attempt stores after all (it ended
  just before the fence, its store retried) never replaces it.

``margin`` is two bounded calls (connect and answer, each at most a quarter of the
renewal period, :func:`~worker.broker.urls.bounded_redis_client`), one step of the
keeper's clock (1 s) and one second for the pool process to die. The keeper runs on a
thread of the main process, not on the consumer's timer: that timer stands still while
the consumer reconnects to a broker, which is exactly when a worker is cut off.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog
from billiard.exceptions import WorkerLostError
from celery import bootsteps
from celery.exceptions import Terminated
from celery.worker import state
from celery.worker.request import Request

from worker.broker.urls import bounded_redis_client
from worker.node import fencing, runtime
from worker.protocol import RUN_JOB
from worker.stores.leases import Leases, token_for

#: Seconds between two looks of the keeper (its fence clock).
STEP_SECONDS = 1.0
#: Seconds allowed for a fenced pool process to die before its lease could lapse.
KILL_SECONDS = 1.0
log = structlog.get_logger("sandrun.worker")


@dataclass(frozen=True, slots=True)
class Running:
    """A job the pool runs: its task id, the token its pool process claims the lease
    with, that process's pid, and (monotonic) when the pool accepted it (it claimed the
    lease after that)."""

    task_id: str
    token: str
    pid: int
    accepted: float


@dataclass(slots=True)
class Kept:
    """A lease the keeper keeps: ``since`` (monotonic) is no later than the moment Redis
    last set its ttl."""

    token: str
    pid: int
    since: float
    fenced: bool = False


class Keeper:
    """The bookkeeping of the leases of one worker's running jobs, with the clock
    injected; :meth:`step` is called every :data:`STEP_SECONDS` and says which jobs to
    fence."""

    def __init__(self, leases: Leases, client: redis.Redis[bytes] | None, *,
                 call_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.leases, self.client, self.clock = leases, client, clock
        self.interval = leases.ttl / 3
        self.margin = 2 * call_timeout + STEP_SECONDS + KILL_SECONDS
        self.kept: dict[str, Kept] = {}
        self.ended: dict[str, str] = {}  # to release, until a call succeeds
        self.next_renewal = 0.0
        self.failing = False

    @property
    def fence_after(self) -> float:
        """Seconds after its last renewal that a job whose lease cannot be renewed is
        stopped."""
        return self.leases.ttl - self.margin

    def step(self, running: Iterable[Running]) -> list[Running]:
        """Follow the pool's jobs, renew or release their leases when due, and return the
        jobs that must be fenced now (each once)."""
        now = self.clock()
        current = {job.task_id: job for job in running}
        for task_id, kept in list(self.kept.items()):
            job = current.get(task_id)
            if job is None or job.token != kept.token:
                self.ended[task_id] = kept.token
                del self.kept[task_id]
        for job in current.values():
            if job.task_id not in self.kept:
                self.kept[job.task_id] = Kept(job.token, job.pid, min(job.accepted, now))
        if self.ended or (self.kept and now >= self.next_renewal):
            self._renew()
        now = self.clock()
        fence = [current[t] for t, kept in self.kept.items()
                 if not kept.fenced and now - kept.since >= self.fence_after]
        for job in fence:
            self.kept[job.task_id].fenced = True
        return fence

    def _renew(self) -> None:
        """One call: renew what runs, release what ended."""
        sent = self.clock()
        running = {t: k.token for t, k in self.kept.items() if not k.fenced}
        if not (running or self.ended):  # only fenced jobs, on their way out
            self.next_renewal = sent + self.interval
            return
        try:
            replies = self.leases.keep(running, self.ended, client=self.client)
        except redis.RedisError as exc:
            if not self.failing:
                log.warning("leases_not_renewed", jobs=len(running), error=repr(exc),
                            fence_after=round(self.fence_after, 1))
            self.failing = True
            self.next_renewal = self.clock() + min(self.interval, 2.0)
            return
        if self.failing:
            log.info("leases_renewed_again", jobs=len(running))
        self.failing = False
        self.ended.clear()
        self.next_renewal = sent + self.interval
        for task_id, reply in replies.items():
            if reply == 1:
                self.kept[task_id].since = sent


def running_jobs() -> list[Running]:
    """The jobs this worker's pool runs now (Celery's active requests of ``RUN_JOB``),
    read from the keeper's thread while the consumer's loop may change the set."""
    for _ in range(5):
        try:
            requests = list(state.active_requests)
            break
        except RuntimeError:  # the set changed size while it was copied
            continue
    else:
        return []
    wall, mono = time.time(), time.monotonic()
    jobs = []
    for request in requests:
        pid, started = getattr(request, "worker_pid", None), getattr(request, "time_start", None)
        if request.task_name != RUN_JOB or not pid or not started:
            continue
        jobs.append(Running(str(request.id), token_for(str(request.hostname), int(pid)),
                            int(pid), mono - max(0.0, wall - float(started))))
    return jobs


def fence(job: Running, fence_after: float, fences: Path) -> None:
    """Stop ``job`` in the pool process running it (:mod:`worker.node.fencing`): its lease
    can no longer be renewed."""
    if job.pid == os.getpid():  # solo and thread pools run jobs in this very process
        log.error("job_not_fenced", task_id=job.task_id, reason=(
            "its lease could not be renewed, but this pool runs jobs in the worker's own "
            "process; use the prefork pool for jobs that must never run twice"))
        return
    log.error("job_fenced", task_id=job.task_id, pid=job.pid, fence_after=round(fence_after, 1),
              reason="its running lease could not be renewed; stopping it before the lease "
                     "lapses, so that another delivery may run it alone")
    fencing.send(fences, job.pid, job.task_id)


class LeaseThread(threading.Thread):
    """The keeper's clock: a daemon thread of the worker's main process."""

    def __init__(self, keeper: Keeper, fences: Path) -> None:
        super().__init__(name="sandrun-leases", daemon=True)
        self.keeper, self.fences = keeper, fences
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(STEP_SECONDS):
            try:
                for job in self.keeper.step(running_jobs()):
                    fence(job, self.keeper.fence_after, self.fences)
            except Exception as exc:  # the keeper must outlive any one bad step
                log.error("lease_keeper_failed", error=repr(exc))


class LeaseKeeping(bootsteps.StartStopStep):
    """Consumer step: starts the keeper's thread once the consumer first starts, keeps it
    through the consumer's restarts (a reconnect is when it matters), stops it at
    shutdown. Nothing runs when leases are off."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **options: Any) -> None:
        super().__init__(parent, **options)
        self.thread: LeaseThread | None = None

    def start(self, parent: Any) -> None:
        rt = runtime.current()
        if self.thread is not None or rt.leases.client is None:
            return
        timeout = rt.leases.ttl / 12  # a quarter of the renewal period
        client = bounded_redis_client(runtime.store_url(rt.settings), timeout)
        keeper = _ACTIVE["keeper"] = Keeper(rt.leases, client, call_timeout=timeout)
        self.thread = LeaseThread(keeper, fencing.fences_dir(rt.settings.state_dir))
        self.thread.start()

    def shutdown(self, parent: Any) -> None:
        if self.thread is not None:
            self.thread.halt.set()
            self.thread.join(5)
            self.thread = None
        _ACTIVE.pop("keeper", None)


#: The keeper of this worker's main process, once its consumer started.
_ACTIVE: dict[str, Keeper] = {}
#: What a pool process that died while running a task is reported as (SystemExit and
#: KeyboardInterrupt: billiard may report the exit before the process is gone).
DIED = (WorkerLostError, Terminated, SystemExit, KeyboardInterrupt)


class LeasedRequest(Request):
    """Celery's request in the worker's main process (the task base class names it), which
    releases the running lease of a job whose pool process died under it (killed by the
    job, the OOM killer, a cancel or a fence) *before* Celery sends the message back to
    the queue, so that its next delivery runs at once instead of waiting for the lease.
    The keeper's thread would not have seen a job that died within its first second."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # Celery's ExceptionWithTraceback
        keeper, pid = _ACTIVE.get("keeper"), getattr(self, "worker_pid", None)
        if keeper is not None and pid and self.task_name == RUN_JOB and isinstance(exc, DIED):
            token = token_for(str(self.hostname), int(pid))
            try:
                keeper.leases.keep({}, {str(self.id): token}, client=keeper.client)
            except redis.RedisError as error:  # it lapses by itself, or the keeper frees it
                log.warning("lease_not_released", task_id=str(self.id), error=repr(error))
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)
