"""The k-of-n levels, the default digest and the tally, as pure functions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from plugins.consensus import canonical_digest, tally
from worker.models import Job, JobResult, OutputFile, Quorum, ReplicaVote, quorum
from worker.protocol import ROUND_LABEL, replica_index, replica_task_id

SHA = "ab" * 32


@pytest.mark.parametrize(("level", "expected"), [
    ("none", (1, 1)), ("low", (2, 2)), ("medium", (2, 3)), ("high", (3, 5)),
    ("2-of-3", (2, 3)), ("3-of-5", (3, 5)), ("1-of-2", (1, 2)), ("9-of-9", (9, 9)),
])
def test_levels_map_to_k_and_n(level: str, expected: tuple[int, int]) -> None:
    assert quorum(level) == Quorum(*expected)
    assert Job(code="1", consensus=level).quorum == expected


@pytest.mark.parametrize("level", ["most", "3-of-2", "0-of-3", "10-of-12", "2-of-3 ", "2of3"])
def test_bad_levels_are_refused_with_what_is_accepted(level: str) -> None:
    with pytest.raises(ValidationError, match="consensus"):
        Job(code="1", consensus=level)


def test_replica_task_ids_belong_to_their_job_only() -> None:
    job = Job(id="job-1", code="1", consensus="2-of-3")
    assert [replica_index(replica_task_id(job, i), job) for i in range(3)] == [0, 1, 2]
    for other in ["job-1", "job-1.replica-3", "job-1.replica-01", "job-2.replica-0",
                  "job-1.replica-x", "xjob-1.replica-0"]:
        assert replica_index(other, job) is None
    assert replica_index("job-1.replica-0", Job(id="job-1", code="1")) is None


def test_each_submission_of_a_job_has_replicas_of_its_own() -> None:
    first = Job(id="job-1", code="1", consensus="2-of-3", labels={ROUND_LABEL: "a1"})
    again = first.replace(labels={ROUND_LABEL: "b2"})
    assert replica_task_id(first, 0) == "job-1.a1.replica-0"
    assert replica_index(replica_task_id(first, 1), first) == 1
    assert replica_index(replica_task_id(first, 1), again) is None


def result(stdout: str = "42\n", exit_code: int | None = 0, outcome: str = "completed",
           **changes: object) -> JobResult:
    fields: dict[str, object] = {"id": "j", "status": "completed", "outcome": outcome,
                                 "exit_code": exit_code, "stdout": stdout, **changes}
    return JobResult.model_validate(fields)


def test_digest_covers_exit_code_stdout_and_outputs_but_not_where_or_how_long() -> None:
    base = canonical_digest(result())
    assert base is not None and base.startswith("sha256:")
    same = result(stderr="warning", execution_time=9.0,
                  execution={"node_id": "elsewhere"}, memory_peak_bytes=1)
    assert canonical_digest(same) == base
    assert canonical_digest(result(stdout="43\n")) != base
    assert canonical_digest(result(exit_code=1, outcome="failed", status="failed")) != base
    out = OutputFile(path="a.txt", size=3, sha256=SHA)
    with_out = canonical_digest(result(outputs=[out]))
    assert with_out != base
    assert canonical_digest(result(outputs=[out.model_copy(update={"sha256": "cd" * 32})])) \
        != with_out
    two = [out, OutputFile(path="b.txt", size=1, sha256=SHA)]
    assert canonical_digest(result(outputs=two)) == canonical_digest(result(outputs=two[::-1]))


@pytest.mark.parametrize("outcome", ["timeout", "memory_limit", "worker_lost", "rejected",
                                     "signal"])
def test_a_replica_that_did_not_run_to_an_exit_does_not_vote(outcome: str) -> None:
    assert canonical_digest(result(exit_code=None, outcome=outcome, status="failed")) is None


def votes(*digests: str | None) -> dict[int, ReplicaVote]:
    return {i: ReplicaVote(replica=i, task_id=f"t{i}", status="completed" if d else "failed",
                           digest=d) for i, d in enumerate(digests)}


@pytest.mark.parametrize(("digests", "k", "n", "expected"), [
    (("x",), 2, 3, None),
    (("x", "x"), 2, 3, ("agreed", "x")),
    (("x", "y"), 2, 3, None),
    (("x", "y", "x"), 2, 3, ("agreed", "x")),
    (("x", "y", "z"), 2, 3, ("disputed", None)),
    (("x", "y"), 3, 3, ("disputed", None)),
    (("x", None), 2, 3, None),
    (("x", None, None), 2, 3, ("failed", None)),
    ((None, None), 2, 3, ("failed", None)),
    (("x", "y", None), 2, 3, ("disputed", None)),
    (("x", "x", "x"), 3, 5, ("agreed", "x")),
    (("x", "y", "y", None), 3, 5, None),
    (("x", "y", None, None), 3, 5, ("disputed", None)),
    (("x",), 1, 2, ("agreed", "x")),
])
def test_tally(digests: tuple[str | None, ...], k: int, n: int,
               expected: tuple[str, str | None] | None) -> None:
    settled = tally(votes(*digests), k, n, latest=digests[-1])
    assert (None if settled is None else (settled.outcome, settled.digest)) == expected


def test_of_two_digests_past_k_the_latest_vote_wins() -> None:
    both = votes("x", "y", "y", "x")
    settled = tally(both, 2, 4, latest="x")
    assert settled is not None and settled.digest == "x"
