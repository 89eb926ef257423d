"""The ``consensus`` plugin: a job runs as ``n`` replicas on distinct workers, and its
result is the outcome ``k`` of them agree on.

After BOINC's redundant computing (``min_quorum``, ``target_nresults``, one result
per host, a validator choosing the canonical result). The producer sends a consensus
job as ``n`` replica messages (:mod:`worker.client.replicas`); this plugin, on every
worker, does the rest with its (Redis) storage, keyed by the job's id:

``on_execute`` (priority 2000, before ``auth`` counts the delivery)
    a replica claims this node for its job (``<job>:node:<node>``); a node that already
    ran another replica of the job puts this one back on the queue for another worker
    (``JobDeferred``, no slot sleeps) and after ``max_requeues`` refuses it, which
    counts against the quorum. A replica of a job whose vote is settled is dropped.
``on_result`` (priority -2500, after every plugin that changes results)
    the replica's digest (:mod:`plugins.consensus.vote`) is recorded with its node and
    status (``<job>:vote:<i>``) and the vote tallied in the same atomic batch; the
    replica's own result, stored under its task id, carries its vote.
``on_error`` (same priority)
    a replica that raised, with no retry asked for, records a vote without a digest.

The first tally that settles the vote (``<job>:decision``, set once) stores the job's
final result under the job's id, where ``JobExecution.wait()`` reads it, and revokes
the replicas that have not voted. ``agreed``: the result of a replica with the agreed
digest (its outputs kept under its task id, named ``consensus.canonical``), costs
summed over the replicas that voted. ``disputed`` and ``failed``: a result of that
status naming each replica's node and digest, logged (``consensus_disputed``,
``consensus_failed``) and dead-lettered (source ``consensus``) for review. Each is
counted in ``sandrun_consensus_total{outcome}``.

Only a replica that has the agreed digest stores an ``agreed`` result (it holds the
result to keep); votes are written before each tally reads them, so the last of the
``k`` agreeing replicas always sees the agreement.

What it does not give: availability against whoever can write to the broker. A claim
on a node is made before ``auth`` verifies the message (so a deferred copy is not
counted as a delivery), so forged copies can make replicas wait for other nodes; and a
forged copy under a replica's task id is rejected, which counts as that replica's
failed vote, so it can make a consensus job fail. It can never make one agree on an
outcome no replica produced: only a replica that ran has a digest.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

from plugins.consensus.config import ConsensusConfig, load_digest
from plugins.consensus.fleet import CeleryFleet, Fleet
from plugins.consensus.vote import Digest, Tally, canonical_digest, tally
from worker import (
    RUN_JOB,
    BasePlugin,
    ConfigurationError,
    ConsensusSummary,
    Cost,
    DeadLetter,
    DuplicateDelivery,
    ErrorContext,
    ErrorInfo,
    Execution,
    ExecutionContext,
    Get,
    Job,
    JobDeferred,
    JobFailed,
    JobRejected,
    JobResult,
    PluginContext,
    PluginManifest,
    ReplicaVote,
    ResultContext,
    Set,
    SetDefault,
    StorageError,
    WorkerContext,
    WorkerInfo,
    consensus_round,
    hook,
    replica_index,
    replica_task_id,
)

#: What a worker advertises in ``WorkerInfo.extra`` (the producer counts these workers).
ADVERTISED = "consensus"
VOTE_PRIORITY = -2500
STORAGE_RETRY_SECONDS = 5.0


class ConsensusPlugin(BasePlugin):
    """Runs consensus jobs' replicas on distinct workers and votes on their results."""

    name = "consensus"
    version = "1.0.0"
    hook_timeout = 0.0  # an abandoned vote would leave the job without a final result
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="k-of-n replicated jobs on distinct workers, voted on by digest",
        keywords=["consensus", "replication", "quorum", "boinc"],
        apis=["on_worker_start", "on_execute", "on_result", "on_error"],
        # veto: re-queue, refuse, drop replicas; network: store the final result, revoke;
        # secrets: a dispute's dead letter keeps the job's env for `sandrun dead replay`
        permissions=["job:veto", "result:transform", "storage", "network", "secrets"],
        configuration=ConsensusConfig)

    def __init__(self, options: ConsensusConfig | None = None, *, fleet: Fleet | None = None,
                 digest: Digest | None = None) -> None:
        self._options = options
        self.options = options or ConsensusConfig()
        self._fleet_given = fleet
        self.fleet: Fleet = fleet or CeleryFleet()
        self._digest_given = digest
        self.digest: Digest = digest or canonical_digest
        self.dead_letters: Any = None

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or ConsensusConfig()
        self.dead_letters = context.dead_letters
        if self._fleet_given is None:
            self.fleet = CeleryFleet(self.options.cancel_grace)
        if self._digest_given is None and self.options.digest is not None:
            self.digest = load_digest(self.options.digest)

    @hook(priority=1000)
    def on_worker_start(self, worker: WorkerInfo, context: WorkerContext) -> WorkerInfo:
        """Advertise that this worker runs replicas (the producer counts such workers)."""
        return worker.replace(extra={**worker.extra, ADVERTISED: self.version})

    # -- placement ------------------------------------------------------------------

    @hook(priority=2000)
    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        """One replica of a job per node; a replica of a settled job is dropped."""
        job = execution.job
        if job is None or job.quorum.n == 1:
            return
        replica = replica_index(context.task_id, job)
        if replica is None:
            raise JobRejected(f"job {job.id} asks for consensus {job.consensus} but arrived "
                              f"as task {context.task_id}, none of its replicas; submit it "
                              "with Sandrun.submit, which sends one message per replica")
        ttl = self.options.record_ttl
        try:
            owner, decision = self._storage().batch(
                SetDefault(_key(job, "node", context.node_id), replica, ttl),
                Get(_key(job, "decision")))
        except StorageError as exc:  # cannot tell where replicas ran: try again, never guess
            raise JobDeferred(STORAGE_RETRY_SECONDS, f"cannot place replica {replica} of "
                              f"job {job.id} now ({exc})") from None
        if decision is not None:
            raise DuplicateDelivery(f"the vote on job {job.id} is settled "
                                    f"({decision.get('outcome')}); replica {replica} is not "
                                    "needed")
        if owner != replica:
            self._requeue(job, replica, owner, context)
        self._storage().set(_key(job, "started", replica), context.node_id, ttl)

    def _requeue(self, job: Job, replica: int, owner: Any, context: ExecutionContext) -> None:
        """Offer ``replica`` to another worker, or refuse it once no other took it."""
        offers = self._storage().incr(_key(job, "requeues", replica),
                                      ttl=self.options.record_ttl)
        if offers > self.options.max_requeues:
            raise JobRejected(f"replica {replica} of job {job.id} was offered {offers - 1} "
                              f"times and only reached nodes that already ran a replica of it "
                              f"(this one ran replica {owner}); it counts against the quorum. "
                              "Run more workers on the queue, or ask for fewer replicas")
        self.logger.info("replica_requeued", job_id=job.id, replica=replica, ran=owner,
                         node=context.node_id, offers=offers)
        raise JobDeferred(self.options.requeue_delay,
                          f"node {context.node_id} already ran replica {owner} of job {job.id}")

    # -- the vote -------------------------------------------------------------------

    @hook(priority=VOTE_PRIORITY)
    def on_result(self, result: JobResult, context: ResultContext) -> JobResult | None:
        """Record this replica's vote; settle the job when the vote is decided."""
        job = context.job
        replica = None if job is None else replica_index(context.task_id, job)
        if job is None or replica is None:
            return None
        vote = ReplicaVote(replica=replica, task_id=context.task_id, node=context.node_id,
                           status=result.status, digest=self._digest_of(result, job),
                           cost=result.cost.amount if result.cost else None)
        self._cast(job, vote, result)
        k, n = job.quorum
        return result.replace(consensus=ConsensusSummary(
            k=k, n=n, outcome="replica", digest=vote.digest, replicas=[vote]).model_dump())

    def _digest_of(self, result: JobResult, job: Job) -> str | None:
        """The replica's digest; a digest function that fails gives none (the replica then
        counts against the quorum) rather than losing the vote."""
        try:
            return self.digest(result)
        except Exception as exc:
            self.logger.error("consensus_digest_failed", job_id=job.id, error=repr(exc))
            return None

    @hook(priority=VOTE_PRIORITY)
    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        """A replica that raised (and is not retried) votes without a digest. A job that
        ended other than completed comes here as JobFailed and then to ``on_result``,
        which records it."""
        job, task_id = context.job, context.task_id
        raised = context.operation == "execute" and not isinstance(error, JobFailed)
        replica = replica_index(task_id, job) if raised and job and task_id else None
        if job is not None and task_id is not None and replica is not None:
            self._cast(job, ReplicaVote(replica=replica, task_id=task_id, status="failed"),
                       None)

    def _cast(self, job: Job, vote: ReplicaVote, result: JobResult | None) -> None:
        """Write ``vote`` and read every vote in one batch; settle the job if decided."""
        k, n = job.quorum
        ttl = self.options.record_ttl
        _, *raw = self._storage().batch(
            Set(_key(job, "vote", vote.replica), vote.model_dump(mode="json"), ttl),
            *(Get(_key(job, "vote", i)) for i in range(n)))
        recorded = {i: ReplicaVote.model_validate(v) for i, v in enumerate(raw) if v}
        settled = tally(recorded, k, n, latest=vote.digest)
        if settled is None or (settled.outcome == "agreed" and vote.digest != settled.digest):
            return  # open, or agreed on a digest whose replica will settle it
        mine = {"outcome": settled.outcome, "by": f"{vote.task_id}:{secrets.token_hex(8)}"}
        if self._storage().batch(SetDefault(_key(job, "decision"), mine, ttl))[0] != mine:
            return  # another replica's tally settled it first
        self._settle(job, settled, recorded, vote, result)

    def _settle(self, job: Job, settled: Tally, recorded: dict[int, ReplicaVote],
                vote: ReplicaVote, result: JobResult | None) -> None:
        """Report (count, log, dead-letter), store the final result, and stop the replicas
        that have not voted."""
        k, n = job.quorum
        replicas = [recorded.get(i) or ReplicaVote(replica=i, task_id=replica_task_id(job, i),
                                                   status="cancelled") for i in range(n)]
        summary = ConsensusSummary(k=k, n=n, outcome=settled.outcome, digest=settled.digest,
                                   canonical=vote.task_id if settled.digest else None,
                                   replicas=replicas)
        pending = [v for v in replicas if v.replica not in recorded]
        self._report(job, settled, summary, pending)  # before the result: whoever reads
        self.fleet.store_final(self._final(job, settled, summary, result))  # it finds both
        if pending:
            started = self._storage().batch(*(Get(_key(job, "started", v.replica))
                                              for v in pending))
            self.fleet.cancel([v.task_id for v in pending],
                              [v.task_id for v, node in zip(pending, started, strict=True)
                               if node is not None])

    def _final(self, job: Job, settled: Tally, summary: ConsensusSummary,
               result: JobResult | None) -> JobResult:
        """The job's final result: the agreeing replica's, or one saying why there is none."""
        cost = _total_cost(summary, result)
        if settled.outcome == "agreed" and result is not None:
            return result.replace(id=job.id, consensus=summary.model_dump(),
                                  cost=cost.model_dump() if cost else None)
        ran = sorted({v.digest for v in summary.replicas if v.digest})
        failed = sum(1 for v in summary.replicas if v.status not in {"pending", "cancelled"}
                     and v.digest is None)
        if settled.outcome == "disputed":
            error = ErrorInfo(type="ConsensusDisputed", message=(
                f"{len(ran)} different outcomes among the replicas of job {job.id} and none "
                f"reached {summary.k} of {summary.n} ({failed} failed); see consensus.replicas"))
        else:
            error = ErrorInfo(type="ConsensusUnreachable", message=(
                f"{failed} of {summary.n} replicas of job {job.id} failed, so {summary.k} can "
                "no longer agree; see each replica's result under consensus.replicas"))
        return JobResult(id=job.id, status=settled.outcome, outcome=settled.outcome,
                         error=error, consensus=summary, cost=cost,
                         context=result.context if result is not None else None)

    def _report(self, job: Job, settled: Tally, summary: ConsensusSummary,
                cancelled: list[ReplicaVote]) -> None:
        """Count, log and (unless agreed) dead-letter a settled vote."""
        if self.metrics is not None:
            self.metrics.counter("sandrun_consensus_total", "Consensus jobs settled, by "
                                 "outcome", ("outcome",)).labels(outcome=settled.outcome).inc()
        votes = [{"replica": v.replica, "node": v.node, "status": v.status, "digest": v.digest}
                 for v in summary.replicas]
        level = "info" if settled.outcome == "agreed" else "warning"
        self.log(level, f"consensus_{settled.outcome}", job_id=job.id, k=summary.k, n=summary.n,
                 digest=settled.digest, replicas=votes, cancelled=len(cancelled))
        if settled.outcome != "agreed" and self.dead_letters is not None:
            self.dead_letters.add(DeadLetter(
                id=job.id, task=RUN_JOB, source="consensus", job=job.model_dump(mode="json"),
                reason=f"consensus {job.consensus} {settled.outcome}: " + "; ".join(
                    f"replica {v['replica']} on {v['node']}: {v['status']} {v['digest']}"
                    for v in votes)))

    def _storage(self) -> Any:
        if self.storage is None:
            raise ConfigurationError("the consensus plugin was used before on_init")
        return self.storage


def _key(job: Job, *parts: object) -> str:
    """A storage key of this submission's vote: ``<job id>.<round>:<part>:...``."""
    return ":".join([consensus_round(job), *map(str, parts)])


def _total_cost(summary: ConsensusSummary, result: JobResult | None) -> Cost | None:
    """What the replicas that voted cost together (cancelled ones reported none)."""
    amounts = [Decimal(v.cost) for v in summary.replicas if v.cost is not None]
    currency = result.cost.currency if result is not None and result.cost else None
    if not amounts or currency is None:
        return None
    return Cost(amount=str(sum(amounts, Decimal(0))), currency=currency)
