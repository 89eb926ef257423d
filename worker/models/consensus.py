"""Consensus levels: how many replicas of a job run (n) and how many must agree (k).

``Job.consensus`` names a level or gives ``k-of-n`` directly:

==========  =====  ==================================================================
level       k-of-n what it buys
==========  =====  ==================================================================
``none``    1-of-1 one run, no replicas (the default)
``low``     2-of-2 a cross-check: any disagreement or failure is reported, not hidden
``medium``  2-of-3 a majority: one bad or failed replica is outvoted
``high``    3-of-5 a majority that outvotes two bad or failed replicas
``k-of-n``  k-of-n any ``1 <= k <= n <= 9`` (``2-of-3`` and ``3-of-5`` are the levels
                   above under their own names)
==========  =====  ==================================================================

The shapes a consensus job's result carries (:class:`ConsensusSummary`, one
:class:`ReplicaVote` per replica) live here too; the vote itself is the ``consensus``
plugin's (``plugins/consensus``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, Field

from worker.models.limits import FROZEN

#: Most replicas a job may ask for: each one is a whole run, paid for.
MAX_REPLICAS = 9
LEVELS: dict[str, tuple[int, int]] = {"none": (1, 1), "low": (2, 2), "medium": (2, 3),
                                      "high": (3, 5)}
_K_OF_N = re.compile(r"^([1-9])-of-([1-9])$")


class Quorum(NamedTuple):
    """``k`` agreeing replicas out of ``n`` run."""

    k: int
    n: int


def quorum(level: str) -> Quorum:
    """The k and n of a consensus level (see the module docstring); ValueError names
    what is accepted."""
    if level in LEVELS:
        return Quorum(*LEVELS[level])
    match = _K_OF_N.match(level)
    if match is None:
        raise ValueError(f"consensus {level!r} is not one of {', '.join(LEVELS)} or "
                         f"'k-of-n' (such as '2-of-3', n at most {MAX_REPLICAS})")
    k, n = int(match[1]), int(match[2])
    if k > n:
        raise ValueError(f"consensus {level!r} asks {k} replicas to agree out of only {n}; "
                         "k must be at most n")
    return Quorum(k, n)


def _valid(level: str) -> str:
    quorum(level)
    return level


#: A ``Job.consensus`` value: a named level or ``k-of-n``.
Consensus = Annotated[str, AfterValidator(_valid)]

#: How a replica ended, as the vote saw it: ``pending`` (no result yet), ``cancelled``
#: (stopped once the vote was decided), or the replica's own JobResult status.
ReplicaStatus = Literal["pending", "cancelled", "completed", "failed", "timeout", "rejected",
                        "disputed"]


class ReplicaVote(BaseModel):
    """One replica of a consensus job: where it ran and the digest of its outcome
    (None when it did not run to an exit of its own, which counts against the quorum)."""

    model_config = FROZEN
    replica: int = Field(ge=0, lt=MAX_REPLICAS)
    task_id: str
    node: str | None = None
    status: ReplicaStatus = "pending"
    digest: str | None = None
    cost: str | None = Field(default=None, description="what its run cost (decimal amount)")


class ConsensusSummary(BaseModel):
    """What a consensus job's result says of its vote.

    On the job's final result ``outcome`` is ``agreed`` (``digest`` reached ``k``
    replicas; ``canonical`` is the replica whose result and outputs were kept),
    ``disputed`` (replicas ran but k of them can no longer agree) or ``failed`` (too
    many replicas failed for k to be reached). On one replica's own stored result it is
    ``replica``, with that replica's vote alone."""

    model_config = FROZEN
    k: int = Field(ge=1, le=MAX_REPLICAS)
    n: int = Field(ge=1, le=MAX_REPLICAS)
    outcome: Literal["agreed", "disputed", "failed", "replica"]
    digest: str | None = None
    canonical: str | None = Field(default=None, description="task id of the kept replica")
    replicas: list[ReplicaVote] = Field(default_factory=list)
