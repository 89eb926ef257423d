"""Where workers advertise themselves, for ``sandrun workers`` and the GPU and replica
checks at submit.

A worker's main process writes its :class:`~worker.models.WorkerInfo` (queues,
concurrency, GPU cards, and what plugins added, such as the metrics URL) under
``sandrun:workers:<hostname>`` when it starts, and removes it when it stops. With
every heartbeat (``SANDRUN_HEARTBEAT_INTERVAL``, from the consumer's own event loop)
it writes that entry again and a :class:`Heartbeat` (its host, the jobs it runs now,
its interval) under ``sandrun:heartbeats:<hostname>``, both expiring after
``SANDRUN_REGISTRY_TTL`` seconds: a worker killed with SIGKILL, or whose loop hangs,
is listed as late until then, and then forgotten.

How long ago a worker beat is read on the broker's own clock, never the worker's: a
heartbeat records the expiry it was written with, and its age is that expiry less
what Redis says remains (``PTTL``). So a host whose clock drifts cannot look alive.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from pydantic import BaseModel, Field, ValidationError

from worker.models import WorkerInfo
from worker.models.limits import FROZEN

PREFIX = "sandrun:workers:"
BEAT_PREFIX = "sandrun:heartbeats:"
#: Seconds an entry outlives its worker's last heartbeat (``SANDRUN_REGISTRY_TTL``).
DEFAULT_TTL = 3600.0


class Heartbeat(BaseModel):
    """What a worker refreshes with every heartbeat."""

    model_config = FROZEN
    host: str = Field(max_length=255)
    running: int = Field(ge=0)
    interval: float = Field(gt=0)
    ttl: float = Field(gt=0)


@dataclass(frozen=True)
class Listed:
    """One registered worker as the fleet view shows it: ``age`` is seconds since its
    last heartbeat on the broker's clock (None: no heartbeat recorded)."""

    info: WorkerInfo
    beat: Heartbeat | None
    age: float | None


def _entry(info: WorkerInfo) -> str:
    """The entry of ``info`` (a CPU-only worker's without the ``gpus`` field, which
    clients of earlier releases, whose WorkerInfo forbids unknown fields, can read)."""
    return info.model_dump_json(exclude=None if info.gpus else {"gpus"})


def register(client: redis.Redis[bytes], info: WorkerInfo, ttl: float = DEFAULT_TTL) -> None:
    """Advertise a starting worker for ``ttl`` seconds (its heartbeats extend it)."""
    client.set(PREFIX + info.hostname, _entry(info), px=max(1, int(ttl * 1000)))


def beat(client: redis.Redis[bytes], info: WorkerInfo, heartbeat: Heartbeat) -> None:
    """One heartbeat: the entry and the heartbeat, both for ``heartbeat.ttl`` seconds, in
    one round trip (the entry again, so that a worker forgotten while it was stopped
    comes back with its next beat)."""
    ttl_ms = max(1, int(heartbeat.ttl * 1000))
    pipe = client.pipeline(transaction=False)
    pipe.set(PREFIX + info.hostname, _entry(info), px=ttl_ms)
    pipe.set(BEAT_PREFIX + info.hostname, heartbeat.model_dump_json(), px=ttl_ms)
    pipe.execute()


def unregister(client: redis.Redis[bytes], hostname: str) -> None:
    """Withdraw a stopping worker."""
    client.delete(PREFIX + hostname, BEAT_PREFIX + hostname)


def advertised(client: redis.Redis[bytes]) -> dict[str, WorkerInfo]:
    """Every advertised worker by hostname (some may be dead: see :func:`fleet`).

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


def fleet(client: redis.Redis[bytes]) -> list[Listed]:
    """Every advertised worker with its last heartbeat, by name (two round trips)."""
    workers = advertised(client)
    names = sorted(workers)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(BEAT_PREFIX + name)
        pipe.pttl(BEAT_PREFIX + name)
    replies = pipe.execute() if names else []
    listed = []
    for index, name in enumerate(names):
        heartbeat = _heartbeat(replies[2 * index])
        remaining = replies[2 * index + 1]
        age = None
        if heartbeat is not None and isinstance(remaining, int) and remaining >= 0:
            age = max(0.0, heartbeat.ttl - remaining / 1000)
        listed.append(Listed(workers[name], heartbeat, age))
    return listed


def _heartbeat(raw: bytes | None) -> Heartbeat | None:
    """A stored heartbeat, or None for none or one this release cannot read."""
    if raw is None:
        return None
    try:
        return Heartbeat.model_validate_json(raw)
    except ValidationError:
        return None
