"""The producer's side of GPU matching: refuse a GPU job no registered worker can run.

A job that requires a GPU is published to its capability class
(:func:`~worker.protocol.job_queue`), which only workers whose cards serve the class
consume. That does not say that one of them exists, nor anything of compute
capability or CUDA version, which are not in queue names. So before publishing, the
client reads the worker registry (``WorkerInfo.gpus``, what each worker advertised at
start) and refuses the job with :class:`~worker.errors.GPUUnavailable` unless some
worker consuming its queue has ``count`` cards that meet every requirement; the error
names the requirement and the best card available.

A client remembers for ``GPU_CHECK_TTL`` seconds that a queue and requirement passed,
so a stream of GPU jobs pays one registry read per window; a refusal is not
remembered, so a worker that starts is seen by the next submit. The registry is the
workers' word and a worker killed with SIGKILL leaves its entry: a job then waits
for such a card, as every job did before this check. Without a Redis result backend
(the filesystem embedded mode) there is no registry, and GPU jobs are published
unchecked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from celery import Celery

from worker.broker.urls import redis_client
from worker.errors import GPUUnavailable
from worker.models import GPURequirements, Job, WorkerInfo
from worker.models.gpus import best_card, describe_need, meets, unmet
from worker.stores import registry

#: Seconds a client trusts that a queue has a worker with suitable cards.
GPU_CHECK_TTL = 10.0


class GPUCheck:
    """:func:`check_gpus` for one client, remembering passes for ``ttl`` seconds."""

    def __init__(self, app: Celery, ttl: float = GPU_CHECK_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.ttl, self.clock = app, ttl, clock
        self._passed: dict[tuple[str, GPURequirements], float] = {}

    def __call__(self, job: Job, queue: str) -> None:
        """Raise GPUUnavailable unless a registered worker on ``queue`` can run ``job``."""
        if not job.needs_gpu or job.gpu is None:
            return
        key = (queue, job.gpu)
        if self.clock() < self._passed.get(key, float("-inf")):
            return
        client = redis_client(str(self.app.conf.result_backend))
        if client is None:
            return
        try:
            workers = registry.advertised(client)
        finally:
            client.close()
        check_gpus(job, queue, workers)
        self._passed[key] = self.clock() + self.ttl


def able_workers(need: GPURequirements, queue: str | None,
                 workers: Mapping[str, WorkerInfo]) -> list[str]:
    """The workers that consume ``queue`` (any queue: None) and have ``need.count`` cards
    meeting ``need``."""
    return sorted(name for name, info in workers.items()
                  if (queue is None or queue in info.queues)
                  and sum(meets(card, need) for card in info.gpus) >= need.count)


def check_gpus(job: Job, queue: str, workers: Mapping[str, WorkerInfo]) -> None:
    """Raise GPUUnavailable unless one of ``workers`` (the registry) can run ``job``,
    saying what the job needs and the closest card there is."""
    need = job.gpu
    if need is None or not job.needs_gpu or able_workers(need, queue, workers):
        return
    raise GPUUnavailable(
        f"job {job.id} needs {describe_need(need)} (queue {queue!r}), and no registered "
        f"worker can run it: {_closest(need, queue, workers)}. Start a worker with such "
        "cards (nvidia-smi finds them, or declare them in SANDRUN_GPUS), or relax the "
        "job's gpu requirements")


def _closest(need: GPURequirements, queue: str, workers: Mapping[str, WorkerInfo]) -> str:
    """Why no worker fits, in words: the best card there is and what it lacks."""
    cards = [card for info in workers.values() for card in info.gpus]
    best = best_card(cards, need)
    if best is None:
        return f"no registered worker has a GPU ({len(workers)} worker(s) registered)"
    if unmet(best, need):
        return (f"the best card available is {best.describe()}, which lacks "
                f"{' and '.join(unmet(best, need))}")
    elsewhere = able_workers(need, None, workers)
    if elsewhere:
        return f"worker(s) {', '.join(elsewhere)} have such cards but do not consume {queue!r}"
    most = max(sum(meets(c, need) for c in info.gpus) for info in workers.values())
    return f"no worker has {need.count} such cards (at most {most} on one worker)"
