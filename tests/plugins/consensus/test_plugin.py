"""The consensus plugin called directly, through a PluginManager with in-memory storage
and a fleet that records what it is asked (real workers: tests/integration/
test_consensus.py)."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.consensus import ConsensusPlugin
from tests.plugins.test_retry import ListStore
from worker import PluginManager
from worker.collector import InMemoryMetrics
from worker.errors import DuplicateDelivery, JobDeferred, JobRejected, StorageError
from worker.models import Execution, Job, JobResult, WorkerInfo
from worker.plugin.context import (
    ErrorContext,
    ExecutionContext,
    ResultContext,
    WorkerContext,
)
from worker.protocol import RUN_JOB, replica_task_id


class RecordingFleet:
    def __init__(self) -> None:
        self.finals: list[JobResult] = []
        self.cancelled: list[str] = []
        self.terminated: list[str] = []

    def store_final(self, result: JobResult) -> None:
        self.finals.append(result)

    def cancel(self, task_ids: list[str], running: list[str]) -> None:
        self.cancelled.extend(task_ids)
        self.terminated.extend(running)


Loaded = tuple[PluginManager, RecordingFleet, ListStore, InMemoryMetrics]


def load(config: dict[str, Any] | None = None, **kwargs: Any) -> Loaded:
    fleet, letters, metrics = RecordingFleet(), ListStore(), InMemoryMetrics()
    manager = PluginManager(dead_letters=letters, metrics=metrics)
    manager.load(ConsensusPlugin(fleet=fleet, **kwargs), config)
    return manager, fleet, letters, metrics


def execute(manager: PluginManager, job: Job, replica: int, node: str) -> None:
    task_id = replica_task_id(job, replica)
    manager.on_execute(Execution(task=RUN_JOB, task_id=task_id, job=job),
                       ExecutionContext(node_id=node, pool_id="1", task_id=task_id))


def finish(manager: PluginManager, job: Job, replica: int, node: str,
           stdout: str = "42\n", **changes: Any) -> JobResult:
    fields: dict[str, Any] = {"id": job.id, "status": "completed", "outcome": "completed",
                              "exit_code": 0, "stdout": stdout, **changes}
    return manager.on_result(JobResult.model_validate(fields), ResultContext(
        node_id=node, task_id=replica_task_id(job, replica), job=job))


def test_the_worker_advertises_that_it_runs_replicas() -> None:
    manager, *_ = load()
    info = manager.on_worker_start(WorkerInfo(hostname="w1", pid=1),
                                   WorkerContext(hostname="w1", pid=1))
    assert info.extra["consensus"] == "1.0.0"


def test_two_of_three_agree_and_the_last_replica_is_cancelled() -> None:
    manager, fleet, letters, metrics = load()
    job = Job(code="print(42)", consensus="2-of-3")
    for i, node in enumerate(["a", "b", "c"]):
        execute(manager, job, i, node)
    own = finish(manager, job, 0, "a", cost={"amount": "0.5", "currency": "USD"})
    assert own.consensus is not None and own.consensus.outcome == "replica"
    assert fleet.finals == []
    finish(manager, job, 1, "b", cost={"amount": "0.25", "currency": "USD"})
    (final,) = fleet.finals
    assert final.id == job.id and final.status == "completed" and final.stdout == "42\n"
    assert final.consensus is not None and final.consensus.outcome == "agreed"
    assert final.consensus.canonical == replica_task_id(job, 1)
    assert [(v.node, v.status) for v in final.consensus.replicas] == [
        ("a", "completed"), ("b", "completed"), (None, "cancelled")]
    assert final.cost is not None and final.cost.amount == "0.75"
    assert fleet.cancelled == fleet.terminated == [replica_task_id(job, 2)]
    assert metrics.value("sandrun_consensus_total", outcome="agreed") == 1
    assert letters.letters == []
    with pytest.raises(DuplicateDelivery, match="settled"):
        execute(manager, job, 2, "c")
    finish(manager, job, 2, "c")  # a replica that finished anyway changes nothing
    assert len(fleet.finals) == 1


def test_disagreement_is_disputed_with_every_node_and_digest_and_dead_lettered() -> None:
    manager, fleet, letters, metrics = load()
    job = Job(code="print(42)", consensus="3-of-3")
    finish(manager, job, 0, "a")
    finish(manager, job, 1, "b", stdout="corrupt\n", context={"correlation_id": "c-1"})
    (final,) = fleet.finals
    assert final.context is not None and final.context.correlation_id == "c-1"
    assert final.status == "disputed" and final.error is not None
    assert final.error.type == "ConsensusDisputed"
    assert final.consensus is not None
    digests = [v.digest for v in final.consensus.replicas]
    assert digests[0] and digests[1] and digests[0] != digests[1] and digests[2] is None
    assert fleet.cancelled == [replica_task_id(job, 2)]
    assert fleet.terminated == []  # it never started: nothing to terminate
    assert metrics.value("sandrun_consensus_total", outcome="disputed") == 1
    (letter,) = letters.letters
    assert letter.id == job.id and letter.source == "consensus" and "disputed" in letter.reason


def test_failed_replicas_count_against_the_quorum() -> None:
    manager, fleet, _, metrics = load()
    job = Job(code="1", consensus="2-of-3")
    finish(manager, job, 0, "a")
    finish(manager, job, 1, "b", status="timeout", outcome="timeout", exit_code=None)
    assert fleet.finals == []
    manager.on_error(RuntimeError("sandbox broke"), ErrorContext(
        operation="execute", job=job, task_id=replica_task_id(job, 2)))
    (final,) = fleet.finals
    assert final.status == "failed" and final.error is not None
    assert final.error.type == "ConsensusUnreachable"
    assert metrics.value("sandrun_consensus_total", outcome="failed") == 1


def test_a_node_runs_one_replica_of_a_job_and_offers_others_back() -> None:
    manager, *_ = load({"max_requeues": 2, "requeue_delay": 0.5})
    job = Job(code="1", consensus="2-of-3")
    execute(manager, job, 0, "a")
    execute(manager, job, 0, "a")  # a redelivery of the same replica still runs
    for _ in range(2):
        with pytest.raises(JobDeferred) as deferred:
            execute(manager, job, 1, "a")
        assert deferred.value.countdown == 0.5
    with pytest.raises(JobRejected, match="offered 2 times"):
        execute(manager, job, 1, "a")
    execute(manager, job, 1, "b")


def test_a_consensus_job_under_its_own_id_is_refused() -> None:
    manager, *_ = load()
    job = Job(code="1", consensus="2-of-3")
    with pytest.raises(JobRejected, match="none of its replicas"):
        manager.on_execute(Execution(task=RUN_JOB, task_id=job.id, job=job),
                           ExecutionContext(node_id="a", pool_id="1", task_id=job.id))


def test_plain_jobs_are_left_alone() -> None:
    manager, fleet, *_ = load()
    job = Job(code="1")
    manager.on_execute(Execution(task=RUN_JOB, task_id=job.id, job=job),
                       ExecutionContext(node_id="a", pool_id="1", task_id=job.id))
    done = JobResult(id=job.id, status="completed", outcome="completed", exit_code=0)
    assert manager.on_result(done, ResultContext(node_id="a", task_id=job.id, job=job)) == done
    assert fleet.finals == []


def first_line(result: JobResult) -> str | None:
    return result.stdout.splitlines()[0] if result.stdout else None


def test_the_digest_is_configurable_by_name() -> None:
    manager, fleet, *_ = load({"digest": "tests.plugins.consensus.test_plugin:first_line"})
    job = Job(code="1", consensus="2-of-2")
    finish(manager, job, 0, "a", stdout="same\nnoise 1\n")
    finish(manager, job, 1, "b", stdout="same\nnoise 2\n")
    (final,) = fleet.finals
    assert final.consensus is not None and final.consensus.digest == "same"


def test_a_storage_outage_defers_a_replica_rather_than_guess_where_others_ran(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager, *_ = load()
    plugin = manager.get("consensus")
    assert isinstance(plugin, ConsensusPlugin) and plugin.storage is not None

    def outage(*ops: Any) -> list[Any]:
        raise StorageError("redis is down")

    monkeypatch.setattr(plugin.storage, "batch", outage)
    with pytest.raises(JobDeferred, match="cannot place replica 0"):
        execute(manager, Job(code="1", consensus="2-of-3"), 0, "a")


def broken_digest(result: JobResult) -> str | None:
    raise ValueError("cannot hash this")


def test_a_failing_digest_counts_against_the_quorum_instead_of_losing_the_vote() -> None:
    manager, fleet, *_ = load({"digest": "tests.plugins.consensus.test_plugin:broken_digest"})
    job = Job(code="1", consensus="2-of-2")
    own = finish(manager, job, 0, "a")
    assert own.consensus is not None and own.consensus.replicas[0].digest is None
    finish(manager, job, 1, "b")
    (final,) = fleet.finals
    assert final.status == "failed"
