"""The Redis side of the ``scheduling`` plugin: held jobs and fair queues.

Every key lives under ``sandrun:scheduling:`` in the broker's Redis; every
change that must not be split is one Lua script, so concurrent beats, producers
and workers never see half a move.

* ``payload`` (hash): task id -> the whole :class:`~worker.protocol.Publication`
  as JSON, for held and fair jobs alike, kept until it has been published.
* ``held`` (sorted set): task id -> when to release it (Unix seconds).
  ``held:claimed`` (sorted set): ids taken out to publish, by claim time.
* ``fair:<queue>:ring`` (list) of tenants with waiting jobs, in turn order;
  ``fair:<queue>:members`` (set) the same tenants; ``fair:<queue>:t:<tenant>``
  (list) their job ids, oldest first; ``fair:<queue>:claimed`` and
  ``fair:<queue>:origin`` (tenant of each claimed id); ``fair:queues`` (set).

Claim, publish, done: a claimed id stays in ``claimed`` until :meth:`done`; one
claimed longer than the claim timeout (its publisher died) is put back by
:meth:`recover`. The scripts compute tenant-list key names from their
arguments, which is fine on one Redis (the broker) but not on Redis Cluster,
which kombu does not support either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis

from plugins.scheduling.leases import Semaphore
from worker import (
    ConfigurationError,
    Publication,
    Publisher,
    is_amqp,
    is_redis,
    kombu_url,
    redis_client,
)

PREFIX = "sandrun:scheduling:"
KOMBU_SEP = "\x06\x16"

_HOLD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
"""
# KEYS: held, held:claimed, payload. ARGV: now, limit, claim time.
_CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[3], id)
  table.insert(out, id)
  table.insert(out, redis.call('HGET', KEYS[3], id) or '')
end
return out
"""
# KEYS: held:claimed, held. ARGV: cutoff, now.
_RECOVER_HELD = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
return #ids
"""
# KEYS: tenant list, ring, members, queues, payload. ARGV: id, json, tenant, queue.
_FAIR_ENQUEUE = """
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[1], ARGV[1])
if redis.call('SADD', KEYS[3], ARGV[3]) == 1 then redis.call('RPUSH', KEYS[2], ARGV[3]) end
redis.call('SADD', KEYS[4], ARGV[4])
"""
# KEYS: ring, members, claimed, origin, payload, broker lists... ARGV: tenant list prefix,
# window, now, jobs waiting in a broker outside this Redis (RabbitMQ). Takes the next
# tenant's oldest job while the queue holds fewer than window.
_FAIR_CLAIM = """
local depth = redis.call('ZCARD', KEYS[3]) + tonumber(ARGV[4])
for i = 6, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
if depth >= tonumber(ARGV[2]) then return false end
while true do
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then return false end
  local list = ARGV[1] .. tenant
  local id = redis.call('LPOP', list)
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], tenant)
  else redis.call('SREM', KEYS[2], tenant) end
  if id then
    redis.call('ZADD', KEYS[3], ARGV[3], id)
    redis.call('HSET', KEYS[4], id, tenant)
    return {id, redis.call('HGET', KEYS[5], id) or ''}
  end
end
"""
# KEYS: claimed, origin, ring, members. ARGV: tenant list prefix, cutoff.
# A stale claim goes back to the front of its tenant's list, and the tenant to the front
# of the ring: it was its turn.
_FAIR_RECOVER = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
for _, id in ipairs(ids) do
  local tenant = redis.call('HGET', KEYS[2], id) or ''
  redis.call('LPUSH', ARGV[1] .. tenant, id)
  if redis.call('SADD', KEYS[4], tenant) == 1 then redis.call('LPUSH', KEYS[3], tenant) end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #ids
"""
# KEYS: members. ARGV: tenant list prefix.
_FAIR_PENDING = """
local n = 0
for _, tenant in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('LLEN', ARGV[1] .. tenant)
end
return n
"""
def dump_publication(pub: Publication) -> str:
    """The whole message as JSON, exactly as it will be released."""
    return json.dumps({"task": pub.task, "task_id": pub.task_id, "queue": pub.queue,
                       "args": pub.args, "kwargs": pub.kwargs, "priority": pub.priority,
                       "eta": pub.eta.isoformat() if pub.eta else None,
                       "expires": pub.expires.isoformat() if pub.expires else None,
                       "headers": pub.headers}, separators=(",", ":"))


def load_publication(raw: str | bytes) -> Publication:
    """The message stored by :func:`dump_publication`, unchanged."""
    data: dict[str, Any] = json.loads(raw)
    eta, expires = data.pop("eta", None), data.pop("expires", None)
    return Publication(**data, eta=datetime.fromisoformat(eta) if eta else None,
                       expires=datetime.fromisoformat(expires) if expires else None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SchedulingStore:
    """Held jobs and fair queues in one Redis (the broker's).

    ``broker_lists(queue)`` names the broker's lists of a queue (one per priority
    step) when the broker is this Redis; ``outside_depth(queue)`` counts the jobs
    waiting in a broker elsewhere (RabbitMQ), so queue depth counts what is waiting
    in the broker itself either way."""

    def __init__(self, client: redis.Redis[bytes],
                 broker_lists: Callable[[str], list[str]],
                 outside_depth: Callable[[str], int] = lambda queue: 0) -> None:
        self.client = client
        self.broker_lists = broker_lists
        self.outside_depth = outside_depth
        self._hold = client.register_script(_HOLD)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._recover_held = client.register_script(_RECOVER_HELD)
        self._fair_enqueue = client.register_script(_FAIR_ENQUEUE)
        self._fair_claim = client.register_script(_FAIR_CLAIM)
        self._fair_recover = client.register_script(_FAIR_RECOVER)
        self._fair_pending = client.register_script(_FAIR_PENDING)

    # -- held jobs -----------------------------------------------------------------
    def hold(self, pub: Publication, release_at: float) -> None:
        """Keep ``pub`` until ``release_at`` (Unix seconds)."""
        self._hold(keys=[PREFIX + "payload", PREFIX + "held"],
                   args=[pub.task_id, dump_publication(pub), release_at])

    def claim_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """Take up to ``limit`` held jobs due at ``now``: ``(task id, payload)`` pairs."""
        flat = self._claim_due(keys=[PREFIX + "held", PREFIX + "held:claimed",
                                     PREFIX + "payload"], args=[now, limit, now])
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    def held_ids(self) -> list[str]:
        """Ids of the jobs held now (not claimed), soonest first."""
        return [_text(x) for x in self.client.zrange(PREFIX + "held", 0, -1)]

    def done(self, task_id: str, queue: str | None = None) -> None:
        """A claimed job was published: forget it (``queue`` for a fair one)."""
        pipe = self.client.pipeline(transaction=True)
        if queue is None:
            pipe.zrem(PREFIX + "held:claimed", task_id)
        else:
            pipe.zrem(self._fair(queue, "claimed"), task_id)
            pipe.hdel(self._fair(queue, "origin"), task_id)
        pipe.hdel(PREFIX + "payload", task_id)
        pipe.execute()

    def recover(self, cutoff: float, now: float) -> int:
        """Put back jobs claimed before ``cutoff`` whose publisher never said done."""
        count = int(self._recover_held(keys=[PREFIX + "held:claimed", PREFIX + "held"],
                                       args=[cutoff, now]))
        for queue in self.fair_queues():
            count += int(self._fair_recover(
                keys=[self._fair(queue, "claimed"), self._fair(queue, "origin"),
                      self._fair(queue, "ring"), self._fair(queue, "members")],
                args=[self._fair(queue, "t:"), cutoff]))
        return count

    # -- fair queues ------------------------------------------------------------------
    def _fair(self, queue: str, part: str) -> str:
        return f"{PREFIX}fair:{queue}:{part}"

    def enqueue_fair(self, pub: Publication, tenant: str) -> None:
        """Queue ``pub`` behind the other jobs of ``tenant`` on its queue."""
        queue = pub.queue
        self._fair_enqueue(
            keys=[self._fair(queue, "t:" + tenant), self._fair(queue, "ring"),
                  self._fair(queue, "members"), PREFIX + "fair:queues", PREFIX + "payload"],
            args=[pub.task_id, dump_publication(pub), tenant, queue])

    def claim_fair(self, queue: str, window: int, now: float) -> tuple[str, str] | None:
        """The next tenant's oldest job, if the queue holds fewer than ``window`` jobs."""
        keys = [self._fair(queue, "ring"), self._fair(queue, "members"),
                self._fair(queue, "claimed"), self._fair(queue, "origin"),
                PREFIX + "payload", *self.broker_lists(queue)]
        got = self._fair_claim(keys=keys, args=[self._fair(queue, "t:"), window, now,
                                                self.outside_depth(queue)])
        return (_text(got[0]), _text(got[1])) if got else None

    def fair_queues(self) -> list[str]:
        """Queues that have (or had) fair jobs."""
        return sorted(_text(q) for q in self.client.smembers(PREFIX + "fair:queues"))

    def pending(self, queue: str) -> int:
        """Fair jobs of ``queue`` not yet in the broker (waiting or being published)."""
        waiting = int(self._fair_pending(keys=[self._fair(queue, "members")],
                                         args=[self._fair(queue, "t:")]))
        return waiting + int(self.client.zcard(self._fair(queue, "claimed")))

    def depth(self, queue: str) -> int:
        """Jobs waiting for ``queue``: in the broker plus fair jobs not yet there."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.broker_lists(queue):
            pipe.llen(key)
        waiting = sum(int(n) for n in pipe.execute()) + self.outside_depth(queue)
        return waiting + self.pending(queue)


class Connections:
    """What the plugin talks to, made on first use: the store and the semaphore on the
    broker's Redis (on RabbitMQ, the result backend's Redis), and a Celery app that only
    publishes (held and fair jobs) and, on RabbitMQ, reads queue depths."""

    def __init__(self, url: str | None, publish_retry_seconds: float) -> None:
        url = url or os.environ.get("SANDRUN_BROKER_URL") or ""
        self.url = kombu_url(url)
        self.redis_url = self.url if not is_amqp(self.url) else kombu_url(
            os.environ.get("SANDRUN_RESULT_BACKEND") or "")
        self.publish_retry_seconds = publish_retry_seconds
        self._store: SchedulingStore | None = None
        self._semaphore: Semaphore | None = None
        self._app: Any = None
        self._publisher: Publisher | None = None

    @property
    def store(self) -> SchedulingStore:
        """Held jobs and fair queues; a ConfigurationError if the broker is not Redis."""
        if self._store is None:
            if not is_redis(self.redis_url):
                raise ConfigurationError(
                    "the scheduling plugin keeps held jobs, fair queues and leases in Redis, "
                    f"but the broker is {self.url or 'not set'!r}; set SANDRUN_BROKER_URL (or "
                    "the plugin's broker_url option) to a redis:// URL, or with RabbitMQ "
                    "SANDRUN_RESULT_BACKEND to one")
            client = redis_client(self.redis_url)
            assert client is not None  # is_redis above
            self._store = SchedulingStore(client, self.broker_lists, self.outside_depth)
        return self._store

    @property
    def semaphore(self) -> Semaphore:
        """The concurrency leases."""
        if self._semaphore is None:
            self._semaphore = Semaphore(self.store.client)
        return self._semaphore

    def celery_app(self) -> Any:
        """A Celery app on the broker (celeryconfig's settings, so its priority steps)."""
        if self._app is None:
            from worker import make_app

            self._app = make_app(self.url, os.environ.get("SANDRUN_RESULT_BACKEND"))
        return self._app

    def broker_lists(self, queue: str) -> list[str]:
        """The broker's Redis lists of ``queue``, one per priority step (kombu's names);
        none on RabbitMQ."""
        if is_amqp(self.url):
            return []
        options = self.celery_app().conf.broker_transport_options
        sep = options.get("sep", KOMBU_SEP)
        return [f"{queue}{sep}{p}" if p else queue
                for p in options.get("priority_steps", [0, 3, 6, 9])]

    def outside_depth(self, queue: str) -> int:
        """Jobs ready in RabbitMQ queue ``queue`` (a passive declare); 0 on Redis."""
        if not is_amqp(self.url):
            return 0
        from worker import queue_depth  # loads Celery's AMQP helpers: only on RabbitMQ

        return queue_depth(self.celery_app(), queue)

    def send(self, pub: Publication) -> None:
        """Publish ``pub`` as it is, riding out a short broker outage."""
        if self._publisher is None:
            self._publisher = Publisher(self.celery_app(), self.publish_retry_seconds)
        self._publisher.publish(pub)
