"""Where live workers advertise themselves, for ``sandrun workers``.

A worker's main process writes its :class:`~worker.models.WorkerInfo` (queues,
concurrency, GPU cards, and what plugins added, such as the metrics URL) under
``sandrun:workers:<hostname>`` when it starts and removes it when it stops.
A worker killed with SIGKILL leaves its entry behind, so listings keep only the
workers that answer a ping.
"""

from __future__ import annotations

import redis
from pydantic import ValidationError

from worker.models import WorkerInfo

PREFIX = "sandrun:workers:"


def register(client: redis.Redis[bytes], info: WorkerInfo) -> None:
    """Advertise a starting worker (a CPU-only one without the ``gpus`` field, which
    clients of earlier releases, whose WorkerInfo forbids unknown fields, can read)."""
    client.set(PREFIX + info.hostname,
               info.model_dump_json(exclude=None if info.gpus else {"gpus"}))


def unregister(client: redis.Redis[bytes], hostname: str) -> None:
    """Withdraw a stopping worker."""
    client.delete(PREFIX + hostname)


def advertised(client: redis.Redis[bytes]) -> dict[str, WorkerInfo]:
    """Every advertised worker by hostname (some may be dead: check with a ping).

    An entry this release cannot read (written by a later one with fields it does not
    know, or damaged) is left out, so that one such worker cannot make every GPU or
    consensus submit fail."""
    keys = list(client.scan_iter(match=PREFIX + "*", count=1000))
    found = {}
    for raw in client.mget(keys) if keys else []:  # one round trip for every entry
        if raw is None:
            continue
        try:
            info = WorkerInfo.model_validate_json(raw)
        except ValidationError:
            continue
        found[info.hostname] = info
    return found
