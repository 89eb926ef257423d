"""Cancelling a job wherever it is, and saying where it was (``JobExecution.cancel``).

The order matters: the record that every worker and the scheduling plugin read
(:mod:`worker.stores.revoked`) is written first, then Celery's revoke is broadcast
(it terminates a running job, process tree and all, and lets the running workers
drop the message from memory at once), then the ``cancelled`` result is stored.
The result backend keeps a SUCCESS it already holds, so a job that finished first
keeps its own result and the cancel says ``finished``.

Where the job was, from what the fleet already stores (no broker scan):

==============  =====================================================================
``finished``    it has a final result (completed, failed, cancelled before, ...)
``running``     a worker stored STARTED
``retrying``    a failed attempt waits for its countdown
``held``        the scheduling plugin keeps it (far-future ETA, or a fair list)
``scheduled``   a running worker holds it until an ETA (``scheduled_time``, a deferred
                job's or a retry's countdown)
``queued``      none of the above: waiting in the broker; an id that was never
                submitted reads ``queued`` too (a broker cannot be asked cheaply)
``unknown``     the result backend is not Redis: nothing could be remembered, only
                the broadcast was sent
==============  =====================================================================

A consensus job is where its furthest replica is. Cancelled by id alone (no handle
from ``submit``), its running replicas are found by asking the workers what they run
(in the same ``INSPECT_TIMEOUT`` as the question about ETA messages), so they are
terminated too.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from celery import Celery, states

from worker.broker.urls import is_redis, redis_client
from worker.protocol import REPLICA_SUFFIX
from worker.stores.revoked import (
    HELD_PAYLOADS,
    cancelled_result,
    check_task_id,
    revocations_for,
)

#: How long ``cancel`` asks the running workers for the ETA messages they hold.
INSPECT_TIMEOUT = 1.0
FINAL_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})


def cancel_job(app: Celery, job_id: str, replicas: list[str]) -> str:
    """Cancel ``job_id`` (and a consensus job's ``replicas``); return where it was."""
    check_task_id(job_id)
    for replica in replicas:
        check_task_id(replica)
    where, running = locate(app, job_id, replicas)
    if where == "finished":
        return where
    replicas = [*replicas, *running]
    remembered = revocations_for(app).add(job_id)
    app.control.revoke([job_id, *replicas], terminate=True, signal="SIGTERM")
    app.backend.store_result(job_id, cancelled_result(job_id).model_dump(
        mode="json", exclude={"provenance"}), states.SUCCESS)
    stored = app.backend.get_task_meta(job_id)
    if stored["status"] == states.SUCCESS and (stored["result"] or {}).get(
            "status") != "cancelled":
        return "finished"  # it ended between the look and the cancel: its result stands
    return where if remembered else "unknown"


def locate(app: Celery, job_id: str, replicas: list[str] | tuple[str, ...] = ()
           ) -> tuple[str, list[str]]:
    """Where ``job_id`` is now (see the module docstring), and, for a consensus job named
    by id alone, the task ids of its replicas that workers run (to terminate them); a
    consensus job is where its furthest replica is."""
    if str(app.backend.get_task_meta(job_id)["status"]) in FINAL_STATES:
        return "finished", []
    ids = [job_id, *replicas]
    found = {str(app.backend.get_task_meta(i)["status"]) for i in ids}
    if states.STARTED in found:
        return "running", []
    if states.RETRY in found:
        return "retrying", []
    if any(_held(app, i) for i in ids):
        return "held", []
    scheduled, running = _ask_workers(app, ids, None if replicas else job_id)
    if running:
        return "running", running
    return ("scheduled" if scheduled else "queued"), []


def _ask_workers(app: Celery, ids: list[str], consensus_id: str | None
                 ) -> tuple[bool, list[str]]:
    """Whether a running worker holds one of ``ids`` as an ETA message, and (when
    ``consensus_id`` is given) the replicas of that job the workers run: a cancel by id
    alone does not know the round in their ids (``<job id>.<round>.replica-<i>``). Queued
    and held replicas need no id: they are skipped through their job's record. The two
    questions are asked at once, so a cancel waits one ``INSPECT_TIMEOUT``."""
    inspect = app.control.inspect(timeout=INSPECT_TIMEOUT)
    with ThreadPoolExecutor(max_workers=2) as pool:
        asked = pool.submit(inspect.scheduled)
        active = pool.submit(inspect.active) if consensus_id is not None else None
        scheduled = any((entry.get("request") or {}).get("id") in ids
                        for entries in (asked.result() or {}).values() for entry in entries or ())
        if active is None or consensus_id is None:
            return scheduled, []
        pattern = re.compile(re.escape(consensus_id) + r"\.[A-Za-z0-9_-]+"
                             + re.escape(REPLICA_SUFFIX) + r"[0-9]+")
        running = {str(entry.get("id")) for entries in (active.result() or {}).values()
                   for entry in entries or () if pattern.fullmatch(str(entry.get("id") or ""))}
    return scheduled, sorted(running)


def _held(app: Celery, job_id: str) -> bool:
    """Whether the scheduling plugin holds ``job_id`` (its store is on the broker's Redis,
    or on RabbitMQ the result backend's)."""
    broker = str(app.conf.broker_url or "")
    url = broker if is_redis(broker) else str(app.conf.result_backend)
    client = redis_client(url)
    return client is not None and bool(client.hexists(HELD_PAYLOADS, job_id))
