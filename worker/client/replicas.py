"""The producer's side of a consensus job: refuse it unless enough workers can run its
replicas, then make one message per replica.

A job whose consensus level asks for ``n`` replicas (``Job.quorum``) runs as ``n``
messages, one per replica, with task ids ``<job id>.<round>.replica-<i>``
(:func:`~worker.protocol.replica_task_id`) and the same job in their bodies. Each goes
through ``on_publish`` on its own, so the ``auth`` plugin signs each with its own
nonce: replicas are never replays of each other, and a copy of one replica is a replay
of that replica. The workers' ``consensus`` plugin votes over the replicas' results
and stores the final one under the job's id, which is what ``JobExecution`` reads.

Replicas run on distinct workers, so a fleet with fewer than ``n`` live workers that
serve the job's queue and run the ``consensus`` plugin (they advertise
``extra["consensus"]``) cannot run the job: :func:`check_fleet` refuses it at submit
with :class:`~worker.errors.ConsensusUnavailable` instead of letting it wait (a
client remembers a queue that passed for ``FLEET_CHECK_TTL`` seconds: :class:`FleetCheck`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from worker.broker.urls import redis_client
from worker.errors import ConsensusUnavailable
from worker.models import Job
from worker.protocol import Publication, replica_task_id
from worker.stores import registry

#: What a worker running the ``consensus`` plugin puts in its ``WorkerInfo.extra``.
ADVERTISED = "consensus"
PING_TIMEOUT = 1.0
#: Seconds a client trusts that a queue has enough workers (see FleetCheck).
FLEET_CHECK_TTL = 10.0


class FleetCheck:
    """:func:`check_fleet` for one client, remembering for ``ttl`` seconds that a queue
    had enough workers, so that a stream of consensus jobs pays for one look-up (a ping
    waits for the workers' replies) every ``ttl`` seconds, not one per job. A worker
    that stops inside that window is not noticed at submit: its replica is offered to
    the others until the consensus plugin's ``max_requeues``, then counts as failed."""

    def __init__(self, app: Celery, ttl: float = FLEET_CHECK_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.ttl, self.clock = app, ttl, clock
        self._enough: dict[tuple[str, int], float] = {}

    def __call__(self, job: Job, queue: str) -> None:
        """Raise ConsensusUnavailable unless ``job``'s replicas can run on ``queue``."""
        key = (queue, job.quorum.n)
        if self.clock() < self._enough.get(key, float("-inf")):
            return
        check_fleet(self.app, job, queue)
        self._enough[key] = self.clock() + self.ttl


def check_fleet(app: Celery, job: Job, queue: str, *, timeout: float = PING_TIMEOUT) -> None:
    """Raise ConsensusUnavailable unless ``n`` live workers serve ``queue`` with the
    ``consensus`` plugin (advertised in the registry, and answering a ping)."""
    n = job.quorum.n
    client = redis_client(str(app.conf.result_backend))
    if client is None:
        raise ConsensusUnavailable(
            f"job {job.id} asks for consensus {job.consensus} ({n} replicas on distinct "
            "workers), which needs a Redis result backend to find workers and hold the "
            "vote; configure SANDRUN_RESULT_BACKEND=redis://... or submit with consensus "
            "'none'")
    try:
        able = sorted(name for name, info in registry.advertised(client).items()
                      if queue in info.queues and ADVERTISED in info.extra)
    finally:
        client.close()
    alive = _answering(app, able, min(n, len(able)), timeout) if able else set()
    if len(alive) < n:
        raise ConsensusUnavailable(
            f"job {job.id} asks for consensus {job.consensus}: {n} replicas on distinct "
            f"workers, but {len(alive)} live worker(s) serve queue {queue!r} with the "
            f"consensus plugin ({', '.join(sorted(alive)) or 'none'}); start more workers "
            "with 'consensus' in SANDRUN_PLUGINS, or ask for fewer replicas")


def _answering(app: Celery, names: list[str], n: int, timeout: float) -> set[str]:
    """Which of ``names`` answer a ping (returns as soon as ``n`` have, so a fleet big
    enough costs one round trip; one too small waits ``timeout`` for the missing)."""
    replies: list[dict[str, Any]] = app.control.ping(destination=names, timeout=timeout,
                                                     limit=n) or []
    return {name for reply in replies for name in reply}


def replica_publications(publication: Publication, job: Job) -> list[Publication]:
    """The ``n`` messages of a consensus job (the publication itself for a plain one)."""
    n = job.quorum.n
    if n == 1:
        return [publication]
    return [dataclasses.replace(publication, task_id=replica_task_id(job, i),
                                headers=dict(publication.headers)) for i in range(n)]
