"""A GPU job delivered to a worker whose cards cannot run it is sent on, not failed.

Queues are capability classes (:func:`~worker.protocol.job_queue`): every worker that
consumes a job's class has a card of its type and VRAM bucket, but the bucket rounds
the job's VRAM need down, and compute capability, CUDA version and the count of cards
are not in the name. So a worker may receive a GPU job its cards do not meet. Before
the job's attempt begins (no ``on_execute`` hook has seen it: the ``auth`` plugin's
nonce is not spent, no scheduling slot is held), such a worker publishes the same
message again and drops its own delivery:

- to a narrower class it does not consume, when the worker registry names a card type
  that meets the job (:func:`narrower_queue`: the job's class with that type, say
  ``sandrun.gpu.a100`` for a job that asked for compute capability 8.0 on
  ``sandrun.gpu``), at once; not for a message whose signature covers its queue
  (:data:`~worker.protocol.QUEUE_BINDING_HEADERS`, the ``auth`` plugin's), which would
  no longer verify elsewhere;
- else back to the queue it came from, every other time after a countdown (deferred:
  the capable worker may be busy, or about to start).

Each re-route counts in the message's ``sandrun_gpu_reroutes`` header (every other one
is immediate, the others wait a countdown doubling from 0.5 s up to 10 s:
:func:`countdown`); after :data:`MAX_REROUTES` of them (about ten minutes without a
capable worker taking it) the job is run here after all, and so ends
``unsatisfiable`` with what it needs and what this worker has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis
import structlog

from worker.models import Job
from worker.models.gpus import meets
from worker.protocol import GPU_REROUTES_HEADER, job_queue
from worker.sandbox.gpu import GPUDevice, suitable
from worker.stores import registry

#: Re-routes of one job before a worker stops passing it on.
MAX_REROUTES = 128
FIRST_COUNTDOWN = 0.5
LONGEST_COUNTDOWN = 10.0

log = structlog.get_logger("sandrun.task")


def misdelivered(job: Job | None, gpus: Sequence[GPUDevice]) -> bool:
    """True when ``job`` needs GPUs and this worker's ``gpus`` cannot meet them."""
    if job is None or not job.needs_gpu or job.gpu is None:
        return False
    return len(suitable(job, gpus)) < job.gpu.count


def reroutes(headers: Mapping[str, Any] | None) -> int:
    """How often the message was re-routed already (a header the sender could forge:
    anything but a small non-negative integer counts as none)."""
    value = (headers or {}).get(GPU_REROUTES_HEADER)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_REROUTES:
        return value
    return 0


def countdown(done: int) -> float:
    """Seconds before the next delivery of a job re-routed ``done`` times already: none
    every other time (0, 0.5, 0, 1, 0, 2, ... up to 10 s).

    On Redis the worker that publishes a countdown is the one likely to fetch it back
    and hold it until it is due, so a delayed re-route alone could keep coming back to
    the same unsuitable worker while a capable one idles. The immediate one that
    follows it is published while this worker's only prefetch slot still holds the
    delivery being re-routed, so an idle worker of the queue takes it, never this one."""
    if done % 2 == 0:
        return 0.0
    return min(FIRST_COUNTDOWN * float(1 << min(done // 2, 16)), LONGEST_COUNTDOWN)


def narrower_queue(job: Job, client: redis.Redis[bytes] | None, default_queue: str,
                   consumed: Sequence[str]) -> str | None:
    """The class queue of ``job`` narrowed to a card type that meets it on some
    registered worker (the type most such workers have), or None when there is none or
    this worker consumes that queue too."""
    need = job.gpu
    if need is None or client is None:
        return None
    able: dict[str, int] = {}
    for info in registry.advertised(client).values():
        fitting = [card for card in info.gpus if meets(card, need)]
        if len(fitting) >= need.count:
            for kind in {card.type for card in fitting}:
                able[kind] = able.get(kind, 0) + 1
    for kind in sorted(able, key=lambda kind: (-able[kind], kind)):
        queue = job_queue(job.replace(gpu=need.model_copy(update={"type": kind})),
                          default_queue)
        if queue not in consumed:
            return queue
    return None


def logged(job: Job, queue: str, done: int, wait: float, gpus: Sequence[GPUDevice]) -> None:
    """The ``gpu_job_rerouted`` event: which job, where to, and this worker's cards."""
    log.info("gpu_job_rerouted", job_id=job.id, queue=queue, reroutes=done + 1,
             countdown=wait, cards=[g.card.describe() for g in gpus])
