"""Running leases: at most one delivery of a job runs at any moment, fleet-wide.

A broker may hand a job's message out again while its first delivery still runs:
kombu's Redis transport gives a cut-off consumer's unacknowledged messages back
(when its channel closes, or when the visibility sweep finds them), and RabbitMQ
requeues them when the consumer's connection drops. Before a job's sandbox starts,
its delivery therefore takes the job's lease, ``sandrun:lease:<task id>`` (a plain
job's task id is its job id; a consensus job's replicas each have their own), with
``SET NX PX`` and a token naming the pool process that runs it
(:func:`token_for`). The lease lives ``SANDRUN_RUNNING_LEASE_SECONDS``:

* the worker's main process renews the leases of every job its pool runs, in one
  round trip (:meth:`Leases.keep`), every third of that time;
* the task base class releases it once the job's result is stored, by
  compare-and-delete (:data:`RELEASE`): an owner whose lease expired and was taken
  by another delivery can never delete the new owner's;
* a delivery that finds it held by another token does not run
  (:class:`Claim`, ``held``): it is published again with a countdown.

The claim rides in the round trip that already reads a job's stored result
(:meth:`Leases.queue_claim`, used by :meth:`~worker.stores.attempts.Attempts.begin`),
queued *before* that read: since an owner stores the result before it releases, a
delivery that gets the lease and then finds no result knows no other delivery
finished the job. Without Redis there is nothing to share: every claim is granted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

KEY_PREFIX = "sandrun:lease:"
#: Compare-and-delete: KEYS[1] is deleted only while it holds ARGV[1] (1 if it did).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: Renew, then release, in one call. ARGV: ttl in ms, how many KEYS to renew, then one
#: token per key. The first keys get their ttl back while they hold their token (1 if
#: so, 0 if the key is gone, -1 if another token holds it); the rest are deleted
#: while they hold theirs (a job that ended without releasing: its process died).
KEEP = """
local ttl, renew, out = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
for i, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if i <= renew then
    if held == ARGV[i + 2] then redis.call('PEXPIRE', key, ttl); out[i] = 1
    elseif held then out[i] = -1 else out[i] = 0 end
  elseif held == ARGV[i + 2] then redis.call('DEL', key)
  end
end
return out
"""


def token_for(node: str, pid: int) -> str:
    """The token of the pool process ``pid`` of worker ``node``: the main process names
    the same token from its request (``hostname``, ``worker_pid``) to renew it. A prefork
    pool process runs one job at a time, so the token names one running delivery."""
    return f"{node}:{pid}"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a delivery learnt when it asked for a job's lease: ``held_by`` is the token
    of the delivery that holds it (None: this one does now), ``remaining`` the seconds
    left on that holder's lease."""

    held_by: str | None = None
    remaining: float = 0.0

    @property
    def ours(self) -> bool:
        """Whether this delivery holds the lease (and may run the job)."""
        return self.held_by is None


GRANTED = Claim()


class Leases:
    """The running leases, in ``client`` (None: no Redis, every claim is granted), each
    held ``ttl`` seconds from its last renewal."""

    def __init__(self, client: redis.Redis[bytes] | None, ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self._release = client.register_script(RELEASE) if client is not None else None
        self._keep = client.register_script(KEEP) if client is not None else None

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @staticmethod
    def key(task_id: str) -> str:
        return KEY_PREFIX + task_id

    def queue_claim(self, pipe: Any, task_id: str, token: str
                    ) -> Callable[[list[Any]], Claim]:
        """Queue the claim of ``task_id``'s lease on ``pipe`` (a pipeline the caller runs:
        ``SET NX PX``, then who holds it and for how long); returns what reads the
        :class:`Claim` from the pipeline's first three replies.

        A lease its own token holds was left by this very process (one job at a time), by
        an earlier delivery that could not release it: it is granted again."""
        key = self.key(task_id)
        pipe.set(key, token, nx=True, px=self.ttl_ms)
        pipe.get(key)
        pipe.pttl(key)

        def read(replies: list[Any]) -> Claim:
            taken, holder, pttl = replies[:3]
            if taken:
                return GRANTED
            if holder is None:  # released between the two: its owner ended the delivery
                return Claim(held_by="(released)", remaining=0.0)
            owner = holder.decode(errors="replace")
            if owner == token:
                self.refresh(task_id, token)
                return GRANTED
            return Claim(held_by=owner, remaining=max(0.0, int(pttl) / 1000))
        return read

    def claim(self, task_id: str, token: str) -> Claim:
        """Take ``task_id``'s lease for ``token`` in a round trip of its own."""
        if self.client is None:
            return GRANTED
        pipe = self.client.pipeline(transaction=False)
        read = self.queue_claim(pipe, task_id, token)
        return read(pipe.execute())

    def refresh(self, task_id: str, token: str) -> None:
        """Give ``token``'s own lease its full ttl again."""
        if self.client is not None:
            self.client.set(self.key(task_id), token, xx=True, px=self.ttl_ms)

    def release(self, task_id: str, token: str) -> bool:
        """Delete ``task_id``'s lease if ``token`` still holds it (True if it did)."""
        if self._release is None:
            return False
        return bool(self._release(keys=[self.key(task_id)], args=[token]))

    def keep(self, running: Mapping[str, str], ended: Mapping[str, str] | None = None,
             client: redis.Redis[bytes] | None = None) -> dict[str, int]:
        """Renew the leases of ``running`` (task id to token) and release those of
        ``ended``, in one round trip (through ``client``, default this store's); returns,
        per running task id, 1 renewed, 0 no lease, -1 held by another token."""
        ended = dict(ended or {})
        if self._keep is None or not (running or ended):
            return {}
        names = list(running)
        keys = [self.key(t) for t in names] + [self.key(t) for t in ended]
        tokens = [running[t] for t in names] + list(ended.values())
        replies = self._keep(keys=keys, args=[self.ttl_ms, len(names), *tokens],
                             client=client)
        return {name: int(reply) for name, reply in zip(names, replies, strict=False)}
