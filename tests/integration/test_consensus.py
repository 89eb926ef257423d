"""Consensus jobs on real workers: replicas on distinct nodes, a vote, the final result.

One private Redis, four workers (one pool process each): ``h1``, ``h2`` and ``h3``
serve the queue ``honest``; ``h1``, ``h2`` and ``bad`` (whose results the corrupt
plugin changes) serve ``mixed``; only ``h1`` serves ``single``. The honest workers
and the producer sign and verify with the auth plugin: replicas are separate signed
messages, never refused as replays of each other.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.result import AsyncResult

from plugins.auth import auth_plugin
from plugins.auth.tokens import HMACProvider
from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker.cli.fleet import replay_letter
from worker.client.client import Sandrun
from worker.errors import ConsensusUnavailable
from worker.models import Job, JobResult
from worker.protocol import Publication
from worker.stores.deadletter import dead_letter_store_for

pytestmark = pytest.mark.slow

KEY = "consensus-key-0123456789abcdefghij"
#: Writes an output file and prints; every honest replica gives the same digest.
CODE = "open('answer.txt', 'w').write('42')\nprint('the answer is 42')"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def plugins(port: int, *extra: object) -> str:
    metrics = {"name": "metrics", "config": {"port": port, "address": "127.0.0.1"}}
    consensus = {"name": "consensus", "config": {"requeue_delay": 0.1, "max_requeues": 30}}
    return json.dumps([{"name": "auth", "config": {"keys": {"k1": KEY}}}, metrics, consensus,
                       *extra])


def consensus_total(ports: list[int], outcome: str) -> float:
    """``sandrun_consensus_total{outcome}`` summed over the fleet's metrics endpoints."""
    total = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            for line in page.read().decode().splitlines():
                if line.startswith(f'sandrun_consensus_total{{outcome="{outcome}"}}'):
                    total += float(line.split()[-1])
    return total


PORTS = {name: free_port() for name in ("h1", "h2", "h3", "bad")}
QUEUES = {"h1": "honest,mixed,single", "h2": "honest,mixed", "h3": "honest", "bad": "mixed"}


@pytest.fixture(scope="module")
def fleet(start_worker: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
          ) -> list[Worker]:
    # job directories of this fleet's own: a worker sweeps its jobs root when it starts,
    # and other fleets on this host must not sweep these workers' running jobs
    work = str(tmp_path_factory.mktemp("jobs"))
    started = [start_worker(name=name, concurrency=1, queues=QUEUES[name], ready=False,
                            SANDRUN_WORKDIR_ROOT=work,
                            SANDRUN_PLUGINS=plugins(port, *(
                                ["tests.support.corrupt:CorruptPlugin"] if name == "bad" else [])))
               for name, port in PORTS.items()]
    for worker in started:
        worker.wait_ready()
    return started


@pytest.fixture
def client(broker: RedisServer, fleet: list[Worker]) -> Iterator[Sandrun]:
    signer = auth_plugin(HMACProvider("k1", KEY), auto_refresh=False)
    with Sandrun.create(broker_url=broker_url(broker), plugins=[signer]) as made:
        yield made


def nodes(result: JobResult) -> list[str]:
    assert result.consensus is not None
    return [(v.node or "").split("@")[0] for v in result.consensus.replicas]


def test_two_of_three_on_three_workers_agrees(client: Sandrun, broker: RedisServer,
                                             tmp_path: Path) -> None:
    run = client.submit(Job(code=CODE, consensus="2-of-3", queue="honest", outputs=["*.txt"]))
    result = run.wait(timeout=120)
    assert (result.id, result.status, result.stdout) == (run.id, "completed",
                                                          "the answer is 42\n")
    summary = result.consensus
    assert summary is not None and (summary.k, summary.n, summary.outcome) == (2, 3, "agreed")
    voted = [v for v in summary.replicas if v.digest is not None]
    assert len(voted) >= 2 and {v.digest for v in voted} == {summary.digest}
    ran = [n for n, v in zip(nodes(result), summary.replicas, strict=True) if v.node]
    assert len(ran) == len(set(ran)) and set(ran) <= {"h1", "h2", "h3"}
    assert run.download("answer.txt", tmp_path).read_text() == "42"
    shown = sandrun_cli(broker, tmp_path, "result", run.id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["consensus"]["outcome"] == "agreed"


def sandrun_cli(broker: RedisServer, tmp_path: Path, *args: str
                ) -> subprocess.CompletedProcess[str]:
    """``sandrun ...`` as a producer of the honest queue, signing with the fleet's key."""
    signer = {"name": "auth", "config": {"provider": {"type": "hmac", "key_id": "k1",
                                                      "secret": KEY}}}
    env = worker_env(broker, tmp_path, SANDRUN_DEFAULT_QUEUE="honest",
                     SANDRUN_PLUGINS=json.dumps([signer]))
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_sandrun_submit_runs_replicas_and_prints_the_vote(broker: RedisServer, tmp_path: Path,
                                                         fleet: list[Worker]) -> None:
    done = sandrun_cli(broker, tmp_path, "submit", "--code", "print(7)", "--consensus",
                       "2-of-3", "--wait", "--wait-timeout", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "consensus 2-of-3 agreed" in done.stdout
    assert done.stdout.count("  replica ") == 3


def slow_first(marker: Path) -> str:
    """Code whose first run (the replica that creates ``marker``) takes 100 s; the
    others answer at once."""
    return (f"import os, time\ntry:\n    os.close(os.open({str(marker)!r}, os.O_CREAT | "
            "os.O_EXCL))\nexcept FileExistsError:\n    pass\nelse:\n    time.sleep(100)\n"
            "print('the answer is 42')")


def test_a_replica_still_running_once_two_agree_is_terminated(client: Sandrun,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "slow"
    job = Job(code=slow_first(marker), consensus="2-of-3", queue="honest", timeout=150)
    result = client.submit(job).wait(timeout=120)
    assert marker.exists() and result.status == "completed"
    assert result.consensus is not None
    (slow,) = [v for v in result.consensus.replicas if v.status == "cancelled"]
    replica = AsyncResult(slow.task_id, app=client.app)
    deadline = time.monotonic() + 60  # a bound for failure, not a timing assertion
    while replica.state != "REVOKED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert replica.state == "REVOKED"


def test_a_corrupt_worker_is_outvoted_two_of_three(client: Sandrun) -> None:
    result = client.submit(Job(code=CODE, consensus="2-of-3", queue="mixed")).wait(timeout=120)
    assert (result.status, result.stdout) == ("completed", "the answer is 42\n")
    summary = result.consensus
    assert summary is not None and summary.outcome == "agreed"
    assert summary.canonical is not None
    by_node = dict(zip(nodes(result), summary.replicas, strict=True))
    assert "bad" not in by_node or by_node["bad"].digest != summary.digest


def test_a_corrupt_worker_disputes_three_of_three(client: Sandrun) -> None:
    run = client.submit(Job(code=CODE, consensus="3-of-3", queue="mixed",
                            env={"API_KEY": "kept-for-replay"}))
    result = run.wait(timeout=120)
    assert result.status == "disputed" and result.error is not None
    assert result.error.type == "ConsensusDisputed"
    summary = result.consensus
    assert summary is not None and summary.outcome == "disputed"
    by_node = dict(zip(nodes(result), summary.replicas, strict=True))
    assert "bad" in by_node and by_node["bad"].digest is not None
    honest = [v.digest for node, v in by_node.items() if node in {"h1", "h2"}]
    assert honest and all(d is not None and d != by_node["bad"].digest for d in honest)
    store = dead_letter_store_for(str(client.app.conf.result_backend))
    letter = store.get(run.id)
    assert letter is not None and letter.source == "consensus"
    assert "disputed" in letter.reason and "bad@" in letter.reason
    assert letter.job is not None and letter.job["env"] == {"API_KEY": "kept-for-replay"}
    assert consensus_total(list(PORTS.values()), "disputed") == 1

    store.remove(run.id)  # as `sandrun dead replay` does: the job is voted on afresh
    replay_letter(client, letter)
    again = client.execution(run.id).wait(timeout=120)
    assert again.status == "disputed" and again.consensus is not None
    assert {v.task_id for v in again.consensus.replicas}.isdisjoint(
        v.task_id for v in summary.replicas)


def test_one_worker_cannot_run_two_of_three_and_submit_says_so(client: Sandrun) -> None:
    with pytest.raises(ConsensusUnavailable, match=r"3 replicas on distinct workers.*1 live"):
        client.submit(Job(code=CODE, consensus="2-of-3", queue="single"))


def test_a_replica_no_other_worker_takes_is_refused_and_fails_the_job(
        client: Sandrun, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the submit check (a worker that stopped since, here skipped): the only worker
    runs one replica and re-queues the other, still signed, until it gives up on it."""
    monkeypatch.setattr(client, "check_fleet", lambda job, queue: None)
    run = client.submit(Job(code=CODE, consensus="2-of-2", queue="single"))
    result = run.wait(timeout=120)
    assert result.status == "failed" and result.error is not None
    assert result.error.type == "ConsensusUnreachable"
    assert result.consensus is not None
    statuses = sorted(v.status for v in result.consensus.replicas)
    assert statuses == ["completed", "rejected"]
    (refused,) = [v for v in result.consensus.replicas if v.status == "rejected"]
    # the replica whose vote settles the job stores its own result just after the job's
    own = client.execution(refused.task_id).wait(timeout=60)
    assert own.error is not None
    assert "was offered 30 times and only reached nodes that already ran" in own.error.message


def ended(client: Sandrun, fleet: list[Worker], task_id: str) -> bool:
    """Whether a replica is over: its result or revocation stored, or a worker dropped it
    (the vote was settled when it arrived: nothing is stored then)."""
    if AsyncResult(task_id, app=client.app).state in {"SUCCESS", "REVOKED"}:
        return True
    return any(task_id in line and "delivery_dropped" in line
               for w in fleet for line in w.output().splitlines())


def test_a_copy_of_a_finished_replica_never_runs(client: Sandrun, fleet: list[Worker],
                                                 tmp_path: Path) -> None:
    """Replicas are separate signed messages (each verified, none a replay of another);
    the exact message of one sent again after the vote never runs (the replay check of
    an open vote is the auth plugin's own, tests/plugins/auth)."""
    runs = tmp_path / "runs"
    sent: list[Publication] = []
    publish = client.publish

    def recording(publication: Publication) -> None:
        sent.append(publication)
        publish(publication)

    client.publish = recording  # type: ignore[method-assign]
    code = f"open({str(runs)!r}, 'a').write('ran\\n')\nprint('the answer is 42')"
    result = client.submit(Job(code=code, consensus="2-of-3", queue="honest")).wait(timeout=120)
    assert result.status == "completed" and len(sent) == 3
    assert all(p.headers.get("sandrun_auth") for p in sent)
    assert len({p.headers["sandrun_auth"] for p in sent}) == 3  # one signature each
    deadline = time.monotonic() + 60  # a bound for failure, not a timing assertion
    while not all(ended(client, fleet, p.task_id) for p in sent):
        assert time.monotonic() < deadline, "the third replica neither ended nor was revoked"
        time.sleep(0.1)  # the third replica may still be running, and write its line
    before = runs.read_text().count("ran")
    assert result.consensus is not None
    voted = {v.task_id for v in result.consensus.replicas if v.status == "completed"}
    copy = next(p for p in sent if p.task_id in voted)  # a revoked one is simply discarded
    publish(copy)
    deadline = time.monotonic() + 60  # a bound for failure, not a timing assertion
    # the worker finds the replica's stored result (or, while its vote is open, auth
    # refuses the copy as a replay): either way it logs that it did not run it
    handled = ("already_finished=True", "delivery_dropped")
    while not any(copy.task_id in line and any(h in line for h in handled)
                  for w in fleet for line in w.output().splitlines()):
        assert time.monotonic() < deadline, "the copy was neither dropped nor run"
        time.sleep(0.1)
    assert runs.read_text().count("ran") == before


@pytest.mark.parametrize("handle", ["from-submit", "by-id"])
def test_cancelling_a_consensus_job_revokes_its_replicas(client: Sandrun, tmp_path: Path,
                                                         handle: str) -> None:
    """By id alone (``sandrun cancel ID``) the running replicas are found and terminated."""
    started = tmp_path / "started"
    code = f"import time\nopen({str(started)!r}, 'a').write('x')\ntime.sleep(100)"
    run = client.submit(Job(code=code, consensus="2-of-3", queue="honest", timeout=150))
    deadline = time.monotonic() + 60  # a bound for failure, not a timing assertion
    while not (started.exists() and len(started.read_text()) == 3):
        assert time.monotonic() < deadline, "the replicas did not start"
        time.sleep(0.1)
    cancelling = run if handle == "from-submit" else client.execution(run.id)
    assert cancelling.cancel() == "running"  # where its replicas are
    assert run.wait(timeout=60).status == "cancelled"
    states = {AsyncResult(task_id, app=client.app).state for task_id in run.replicas}
    while states != {"REVOKED"}:
        assert time.monotonic() < deadline + 60, f"replicas not all revoked: {states}"
        time.sleep(0.1)
        states = {AsyncResult(task_id, app=client.app).state for task_id in run.replicas}
