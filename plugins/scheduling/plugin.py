"""The ``scheduling`` plugin: priorities, held jobs, a fleet-wide cap, backpressure, fairness.

``scheduling_plugin(strategy="priority-first", max_concurrent=10, queue_size=1000)``,
or ``{"name": "scheduling", "config": {...}}`` in ``SANDRUN_PLUGINS``. Load it in
producers and workers alike, and run ``sandrun beat`` once or more per fleet.

* ``strategy``: ``priority-first`` (default) publishes ``Job.priority`` (0 lowest,
  9 most urgent) as a Celery priority; on Redis, kombu serves *lower* numbers
  first from one list per priority step (``celeryconfig``), so 9 becomes 0.
  ``fifo`` publishes without a priority (one lane, submission order). ``fair``
  also keeps each tenant's jobs (label ``fair_label``) in its own Redis list and
  moves them to the broker round-robin, never more than ``fair_window`` waiting
  there, so one producer's burst cannot starve the others. The next jobs move
  when a job ends (``on_result``), at submit and at every beat.
* ``scheduled_time``: a job due within the horizon is published with Celery's
  ETA. ``on_publish`` (after the ``auth`` signature) holds one due later in a Redis
  sorted set; ``process_queue`` publishes it unchanged (only the unsigned
  ``sandrun_submitted_at`` header is refreshed) once it is within the horizon, so it
  keeps its exact ETA and signature and holds no worker slot while it waits. The
  horizon is the visibility timeout minus the job's timeout minus
  ``SANDRUN_VISIBILITY_MARGIN`` (600 s; an ETA message stays unacknowledged until
  it has run) unless ``eta_horizon`` says otherwise.
* ``max_concurrent``: at most that many jobs run at once per queue (or per value
  of label ``concurrency_label``), across the fleet: a Redis semaphore whose
  leases the running process renews every ``lease_ttl / 3`` s, so a killed
  worker's lease expires ``lease_ttl`` s later. A job over the cap is deferred
  (``JobDeferred``: re-published after ``defer_seconds`` plus up to 50 % jitter),
  never waiting in a slot. Leases are given back in ``on_result`` and
  ``on_error`` (rejected, failed and retried jobs pass one of them).
* ``rate``: job starts per period (``"100/m"``) per queue or ``rate_label`` value,
  fleet-wide; a job over it is deferred to the start it reserved (``rates``).
* ``queue_size``: at submit, a queue already holding that many jobs (broker lists
  plus fair jobs not yet moved) raises ``QueueFull`` (``queue_full_policy``
  ``reject``) or is waited on up to ``block_timeout`` s (``block``). It is a soft
  limit: producers checking at the same moment may overshoot by their number.
* ``deadline``: a held or fair job claimed past its deadline is stored expired, never
  published (``expiry``).

Exactly once: a held or fair job is claimed by one Lua script (so concurrent
beats never take the same job), published, then forgotten. If the publisher
dies between publishing and forgetting (a few microseconds), the claim is put
back after ``claim_timeout`` s and the job published a second time; the worker
then skips it if the first run already stored its result (and the ``auth``
plugin refuses it as a replay), otherwise it can run twice. Nothing is ever
lost: a claim is only dropped after its publish returned.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from plugins.scheduling.config import HOLD_PRIORITY, SchedulingConfig, celery_priority
from plugins.scheduling.expiry import Cancels, past_deadline, store_expired
from plugins.scheduling.hooks import BEAT_HOOK
from plugins.scheduling.leases import LeaseKeeper, Semaphore
from plugins.scheduling.rates import RateGate
from plugins.scheduling.store import Connections, SchedulingStore, load_publication
from worker import (
    RUN_JOB,
    SUBMITTED_HEADER,
    BasePlugin,
    ErrorContext,
    Execution,
    ExecutionContext,
    Job,
    JobDeferred,
    JobResult,
    PluginContext,
    PluginManifest,
    Publication,
    PublicationHeld,
    PublishContext,
    QueueFull,
    ResultContext,
    SubmissionContext,
    SubmissionRejected,
    hook,
    is_amqp,
    job_queue,
    load_settings,
)


class SchedulingPlugin(BasePlugin):
    """Priorities, held far-future jobs, a fleet-wide concurrency cap, backpressure, fairness."""

    name = "scheduling"
    version = "1.0.0"
    custom_hooks = (BEAT_HOOK,)
    # Run inline, no timeout thread: the hooks make bounded Redis calls, publish under the
    # publish retry policy, and on_submit waits up to block_timeout on purpose (a hook
    # timeout abandoning that wait would publish into a full queue).
    hook_timeout = 0
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="Priorities, scheduled jobs, concurrency caps, backpressure, fair queues",
        keywords=["scheduling", "priority", "eta", "concurrency", "fairness"],
        apis=["on_submit", "on_publish", "on_execute", "on_result", "on_error", BEAT_HOOK],
        # sets the Celery priority, refuses (QueueFull), holds and defers jobs, talks to
        # its own Redis, and stores whole messages (env and signature) to send later
        permissions=["job:transform", "job:veto", "network", "secrets"],
        configuration=SchedulingConfig)

    def __init__(self, options: SchedulingConfig | None = None, *,
                 clock: Callable[[], float] = time.time,
                 publisher: Callable[[Publication], None] | None = None) -> None:
        self._options = options
        self.options = options or SchedulingConfig()
        self.clock = clock
        self._publisher = publisher
        self._queues: dict[str, str | None] = {}
        self.settings = load_settings()
        self._connect(None)

    def _connect(self, logger: Any) -> None:
        self.connections = Connections(self.options.broker_url,
                                       self.settings.publish_retry_seconds)
        self.publisher = self._publisher or self.connections.send
        self.cancels = Cancels(self.connections.celery_app)
        self.leases = LeaseKeeper(lambda: self.semaphore, self.options.lease_ttl, logger)
        self.rates = RateGate(self.options.rate, self.options.rate_label,
                              self.options.rate_burst, lambda: self.store.client,
                              self.settings.default_queue)

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or SchedulingConfig()
        self._connect(self.logger)
        if (self.options.strategy == "priority-first" and is_amqp(self.connections.url)
                and os.environ.get("SANDRUN_AMQP_QUEUES", "quorum") == "quorum"):
            self.logger.warning(
                "priority_not_honoured", broker="rabbitmq", queues="quorum",
                fix="SANDRUN_AMQP_QUEUES=priority declares classic queues with priorities")

    @property
    def store(self) -> SchedulingStore:
        """Held jobs and fair queues in Redis, connected on first use."""
        return self.connections.store

    @property
    def semaphore(self) -> Semaphore:
        """The concurrency leases, on the same Redis."""
        return self.connections.semaphore

    def _count(self, name: str, doc: str) -> None:
        if self.metrics is not None:
            self.metrics.counter(f"sandrun_scheduling_{name}_total", doc).inc()

    # -- submit ------------------------------------------------------------------------
    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        if self.options.queue_size is not None and self.release_time(job, self.clock()) is None:
            self._wait_for_room(job_queue(job, self.settings.default_queue))

    def release_time(self, job: Job, now: float) -> float | None:
        """When to publish a job due beyond the ETA horizon; None to publish it now."""
        if job.scheduled_time is None:
            return None
        due = job.scheduled_time.timestamp()
        horizon = self.options.eta_horizon or max(
            0.0, self.settings.visibility_timeout - job.timeout - self.settings.visibility_margin)
        return due - horizon if due - now > horizon else None

    def _wait_for_room(self, queue: str) -> None:
        limit = self.options.queue_size
        assert limit is not None
        deadline = time.monotonic() + (self.options.block_timeout
                                       if self.options.queue_full_policy == "block" else 0)
        pause = 0.05
        while (depth := self.store.depth(queue)) >= limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._count("queue_full", "Submissions refused by queue_size")
                self.logger.warning("queue_full", queue=queue, depth=depth, queue_size=limit,
                                    policy=self.options.queue_full_policy)
                waited = (f" after waiting {self.options.block_timeout:g}s"
                          if self.options.queue_full_policy == "block" else "")
                raise QueueFull(f"queue {queue!r} already holds {depth} job(s), its queue_size "
                                f"is {limit}{waited}; submit again later, add workers, or "
                                "raise the scheduling plugin's queue_size")
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    @hook(priority=HOLD_PRIORITY)
    def on_publish(self, pub: Publication, context: PublishContext) -> Publication:
        """Give the message its Celery priority; take a far-future job or a fair one over
        (stored as it is, signed, and sent later) with PublicationHeld."""
        job = context.job
        if job is None or pub.task != RUN_JOB:
            return pub
        if self.options.strategy != "fifo":
            pub = replace(pub, priority=celery_priority(job.priority, self.connections.url))
        release_at = self.release_time(job, self.clock())
        if release_at is None and self.options.strategy != "fair":
            return pub
        try:
            if release_at is not None:
                self._hold(pub, release_at)
            else:
                self._enqueue_fair(pub, job.labels.get(self.options.fair_label, ""))
        except Exception as exc:  # isolated, it would be sent unheld: refuse the job instead
            raise SubmissionRejected(
                f"job {pub.task_id} was not published: the scheduling plugin could not store "
                f"it to send later ({type(exc).__name__}: {exc}); submit it again once its "
                "Redis is reachable") from exc
        raise PublicationHeld(f"job {pub.task_id} is stored by the scheduling plugin and "
                              "published when it is due or its tenant's turn comes")

    def _hold(self, pub: Publication, release_at: float) -> None:
        self.store.hold(pub, release_at)
        self._count("jobs_held", "Jobs held until their scheduled time nears")
        self.logger.info("job_held", job_id=pub.task_id, release_at=round(release_at, 3),
                         eta=pub.eta.isoformat() if pub.eta else None)

    def _enqueue_fair(self, pub: Publication, tenant: str) -> None:
        self.store.enqueue_fair(pub, tenant)
        try:
            self.pump(pub.queue)
        except Exception as exc:  # the job is stored; the next job end or beat moves it
            self.logger.warning("fair_pump_failed", queue=pub.queue, error=repr(exc))

    # -- release -----------------------------------------------------------------------
    def process_queue(self, now: float | None = None) -> int:
        """Publish held jobs that are due and move fair jobs; return how many were published.

        Called by ``sandrun beat`` (hook ``on_beat``); safe to call from several
        processes at once. Claims older than ``claim_timeout`` are put back first."""
        now = self.clock() if now is None else now
        recovered = self.store.recover(now - self.options.claim_timeout, now)
        if recovered:
            self.logger.warning("scheduling_claims_recovered", count=recovered)
        published = 0
        while batch := self.store.claim_due(now, self.options.release_batch):
            for task_id, raw in batch:
                published += self._publish_claimed(task_id, raw, None)
        for queue in self.store.fair_queues():
            published += self.pump(queue, now)
        return published

    def pump(self, queue: str, now: float | None = None) -> int:
        """Move fair jobs of ``queue`` to the broker, tenants in turn, up to ``fair_window``."""
        now = self.clock() if now is None else now
        moved = 0
        while (claimed := self.store.claim_fair(queue, self.options.fair_window, now)):
            moved += self._publish_claimed(*claimed, queue)
        return moved

    def _publish_claimed(self, task_id: str, raw: str, queue: str | None) -> int:
        if not raw:
            self.logger.error("scheduled_job_payload_missing", job_id=task_id)
            self.store.done(task_id, queue)
            return 0
        pub = load_publication(raw)
        if self.cancels.cancelled(pub):
            self.cancels.store(pub, self.logger, queue is not None)
            self.store.done(task_id, queue)
            self._count("jobs_cancelled", "Held or fair jobs cancelled before they were published")
            return 0
        if past_deadline(pub, time.time()):
            store_expired(self.connections.celery_app(), pub, self.logger, queue is not None)
            self.store.done(task_id, queue)
            self._count("jobs_expired", "Held or fair jobs whose deadline passed unpublished")
            return 0
        pub.headers[SUBMITTED_HEADER] = f"{time.time():.6f}"
        self.publisher(pub)  # raises: the claim stays and is recovered after claim_timeout
        self.store.done(task_id, queue)
        self._count("jobs_released", "Held or fair jobs published")
        self.logger.info("job_released", job_id=task_id, queue=pub.queue, fair=queue is not None)
        return 1

    def on_beat(self, data: Any, context: Any) -> None:
        """Called by ``sandrun beat`` every interval."""
        self.process_queue()

    # -- execute -----------------------------------------------------------------------
    def scope(self, job: Job, queue: str | None) -> str:
        """What the concurrency cap counts: the job's queue, or its label's value."""
        label = self.options.concurrency_label
        if label is not None:
            return f"label:{label}={job.labels.get(label, '')}"
        return f"queue:{queue or job_queue(job, self.settings.default_queue)}"

    @hook(priority=2000)
    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        job, limit = execution.job, self.options.max_concurrent
        if job is None:
            return
        scope = None if limit is None else self.scope(job, context.queue)
        if scope is not None and limit is not None and not self.semaphore.acquire(
                scope, context.task_id, limit, self.options.lease_ttl):
            self._defer(scope, limit)
        self.rates.check(job, context, self.logger,
                         lambda: self._rate_deferred(scope, context.task_id))
        if scope is not None:
            self.leases.add(context.task_id, scope, job.timeout)
        if self.options.strategy == "fair":  # on_result moves this queue's next fair job
            self._queues[context.task_id] = context.queue

    def _rate_deferred(self, lease: str | None, task_id: str) -> None:
        """A job over its rate does not run now: its place under the cap goes back."""
        if lease is not None:
            self.semaphore.release(lease, task_id)
        self._count("jobs_rate_deferred", "Jobs put back until their start under the rate")

    def _defer(self, scope: str, limit: int) -> NoReturn:
        countdown = self.options.defer_seconds * (1 + random.random() / 2)
        self._count("jobs_deferred", "Jobs put back because max_concurrent was reached")
        self.logger.info("job_deferred_over_cap", scope=scope, max_concurrent=limit,
                         countdown=round(countdown, 3))
        raise JobDeferred(countdown, f"{limit} job(s) of {scope} already running "
                                     f"(max_concurrent); trying again in {countdown:.1f}s")

    def on_result(self, result: JobResult, context: ResultContext) -> None:
        self.leases.release(context.task_id)
        queue = self._queues.pop(context.task_id, None)
        if self.options.strategy == "fair" and context.job is not None:
            self.pump(queue or job_queue(context.job, self.settings.default_queue))

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        if context.operation == "execute" and context.task_id is not None:
            self.leases.release(context.task_id)
            self._queues.pop(context.task_id, None)  # a retry never reaches on_result

    def on_destroy(self) -> None:
        self.leases.close()


def scheduling_plugin(*, clock: Callable[[], float] = time.time,
                      publisher: Callable[[Publication], None] | None = None,
                      **options: Any) -> SchedulingPlugin:
    """``scheduling_plugin(strategy="fair", max_concurrent=10, queue_size=1000)``."""
    return SchedulingPlugin(SchedulingConfig(**options) if options else None, clock=clock,
                            publisher=publisher)
