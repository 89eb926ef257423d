"""The vote of the ``consensus`` plugin, as pure functions over replicas' votes.

:func:`canonical_digest` is the default digest of a replica's outcome: SHA-256 of a
canonical JSON form of its exit code, its stdout and its outputs' contents (each
output's path, size and SHA-256, sorted by path), with the truncation flags. stderr,
timings and the node are left out: they differ between honest runs. A replica votes
only when its job ran to an exit of its own (``completed``, or ``failed`` with an exit
code); a timeout, a limit, a lost worker or a refusal gives no digest and counts
against the quorum.

:func:`tally` decides, after each vote, whether the job is settled: ``agreed`` once a
digest is shared by ``k`` replicas, ``disputed`` once no digest can reach ``k`` and the
replicas that ran disagree, ``failed`` once no digest can reach ``k`` for want of
replicas that ran. Votes only ever add, so once a tally settles, every later one
settles the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from worker import JobResult, ReplicaVote

#: A digest function: a replica's result to a string, or None when it does not vote.
Digest = Callable[[JobResult], "str | None"]
#: Outcomes of a job that ran to an exit of its own: these replicas vote.
VOTING_OUTCOMES = frozenset({"completed", "failed"})


def canonical_form(result: JobResult) -> bytes:
    """The bytes the default digest hashes (see the module docstring)."""
    outputs = sorted((o.path, o.size, o.sha256) for o in result.outputs)
    form = {"exit_code": result.exit_code, "stdout": result.stdout,
            "stdout_truncated": result.stdout_truncated, "outputs": outputs,
            "outputs_truncated": result.outputs_truncated}
    return json.dumps(form, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def votes(result: JobResult) -> bool:
    """Whether a replica's result takes part in the vote: its job ran to an exit."""
    return result.exit_code is not None and result.outcome in VOTING_OUTCOMES


def canonical_digest(result: JobResult) -> str | None:
    """``sha256:<hex>`` of :func:`canonical_form`, or None for a replica that does not vote."""
    if not votes(result):
        return None
    return "sha256:" + hashlib.sha256(canonical_form(result)).hexdigest()


@dataclass(frozen=True, slots=True)
class Tally:
    """A settled vote: ``digest`` is the agreed one (``agreed`` only)."""

    outcome: Literal["agreed", "disputed", "failed"]
    digest: str | None = None


def tally(recorded: Mapping[int, ReplicaVote], k: int, n: int,
          latest: str | None = None) -> Tally | None:
    """The vote over the replicas ``recorded`` so far (by replica index), or None while it
    is still open. ``latest``, the digest of the vote just cast, wins a tie between two
    digests that both reached ``k`` (possible when ``k <= n / 2``): it is the one that
    got there first."""
    counts = Counter(v.digest for v in recorded.values() if v.digest is not None)
    reached = [digest for digest, count in counts.items() if count >= k]
    if reached:
        return Tally("agreed", latest if latest in reached else sorted(reached)[0])
    still_running = n - len(recorded)
    if max(counts.values(), default=0) + still_running >= k:
        return None
    return Tally("disputed" if len(counts) > 1 else "failed")
