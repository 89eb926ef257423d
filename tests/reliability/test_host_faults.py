"""A fleet across hosts: workers on their own network namespaces (``fleet``).

Each worker host reaches the broker host (Redis on 10.233.71.1:6379) over its own veth
link; the side-effect ledger listens on the broker host too, so a job's reports cross
the same link (``tests.support.fleet``). Every scenario submits sandboxed ledger jobs
through the producer client and counts, like the reliability tier's worker faults,
what completed, what was lost and what was duplicated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.reliability.conftest import ScenarioReport
from tests.support.fleet import REDIS_PORT, Fleet
from tests.support.ledger import Run, job_code
from tests.support.netns import pids_in
from tests.support.results import Tally, tally
from worker.client.client import JobExecution
from worker.models import JobResult

JOBS = 100
SETTLE_SECONDS = 90
#: Faults outlast the connections' checks: health check 2 s (a BRPOP 3 s overdue is
#: dropped), socket timeout 5 s; a job unacknowledged 30 s comes back to the queue.
#: A job cut off mid-run waits for the link to report its end: its timeout (20 s) is
#: longer than the partition, so that it ends completed, not timed out.
FAULT_ENV = {"SANDRUN_REDIS_HEALTH_CHECK_INTERVAL": "2", "SANDRUN_REDIS_SOCKET_TIMEOUT": "5",
             "SANDRUN_VISIBILITY_TIMEOUT": "30", "SANDRUN_MAX_JOB_TIMEOUT": "20",
             "SANDRUN_VISIBILITY_MARGIN": "5"}
JOB_TIMEOUT = 20
PARTITION_SECONDS = 10.0


def peers(fleet: Fleet) -> set[tuple[str, str]]:
    """The (address, port) of every TCP connection to the broker host's Redis, as the
    broker host sees them (a half-open one included: it cannot tell)."""
    out = subprocess.run(["ip", "netns", "exec", fleet.net.broker.name, "ss", "-Htn",
                          "state", "established", "sport", f"= :{REDIS_PORT}"],
                         capture_output=True, text=True, check=True).stdout
    return {tuple(line.split()[-1].rsplit(":", 1)) for line in out.splitlines()  # type: ignore[misc]
            if line.strip()}


def connected_hosts(fleet: Fleet) -> set[str]:
    """The addresses with a TCP connection to the broker host's Redis."""
    return {address for address, _ in peers(fleet)}


def submit(fleet: Fleet, count: int, linger: float, timeout: int = JOB_TIMEOUT
           ) -> list[JobExecution]:
    code = job_code(fleet.ledger_server.port, linger=linger, host=fleet.ledger_server.host)
    return [fleet.client.job().code(code).timeout(timeout).submit() for _ in range(count)]


def conclude(fleet: Fleet, runs: list[JobExecution]) -> Tally:
    """Every job's final result, counted against the ledger (completed: the result of a
    run that reached its end)."""
    def completed(result: JobResult) -> bool:
        run = fleet.ledger.runs.get(result.stdout.strip())
        return result.status == "completed" and run is not None and run.ended is not None

    return tally(fleet.finals(runs, SETTLE_SECONDS), completed, fleet.watch, fleet.ledger)


def started_on(fleet: Fleet, pid: int, after: float) -> Callable[[], list[Run]]:
    """Runs of the worker ``pid`` that started after ``after`` (time.time())."""
    def runs() -> list[Run]:
        with fleet.ledger.changed:
            return [r for r in fleet.ledger.runs.values()
                    if r.worker == pid and r.started > after]
    return runs


def test_workers_on_three_hosts_share_the_jobs_over_their_links(
        fleet: Fleet, scenario_report: ScenarioReport) -> None:
    for host in fleet.net.workers:
        fleet.start_worker(host, concurrency=1)
    runs = [fleet.client.job().code(job_code(fleet.ledger_server.port, linger=0.2,
                                             host=fleet.ledger_server.host)).submit()
            for _ in range(30)]
    finals = {run.id: fleet.client.app.backend.get_task_meta(run.id).get("result")
              for run in runs if run.wait(timeout=90)}

    def completed(result: JobResult) -> bool:
        run = fleet.ledger.runs.get(result.stdout.strip())
        return result.status == "completed" and run is not None and run.ended is not None

    counts = tally(finals, completed, fleet.watch, fleet.ledger)
    scenario_report.record("hosts: 3 worker hosts over veth", counts.submitted,
                           counts.completed, len(counts.lost), len(counts.duplicated))
    assert not counts.lost and not counts.duplicated, counts.explain()
    assert connected_hosts(fleet) >= {h.address for h in fleet.net.workers}
    ran_on = {run.worker for run in fleet.ledger.runs.values()}
    assert ran_on == {w.proc.pid for w in fleet.workers.values()}, "every host took jobs"


@pytest.mark.parametrize("fleet", ["unix"], indirect=True)
def test_a_partitioned_worker_host_rejoins_and_no_job_is_lost_or_doubled(
        fleet: Fleet, scenario_report: ScenarioReport) -> None:
    cut, *others = fleet.net.workers
    workers = [fleet.start_worker(host, concurrency=2, **FAULT_ENV)
               for host in fleet.net.workers]
    victim = workers[0]
    runs = submit(fleet, JOBS, linger=1.0)
    busy = fleet.ledger.wait_for("the first host to run jobs",
                                 started_on(fleet, victim.proc.pid, 0))
    assert isinstance(busy, list)
    before = {p for p in peers(fleet) if p[0] == cut.address}
    fleet.net.partition(cut)
    time.sleep(PARTITION_SECONDS)  # the fault's length: longer than every check
    fleet.net.reconnect(cut)
    back = time.time()
    back_mono = time.monotonic()
    # reconnected: a connection from the host that was not there before the cut
    while (not {p for p in peers(fleet) if p[0] == cut.address} - before
           and time.monotonic() - back_mono < 60):
        time.sleep(0.1)
    reconnected = time.monotonic() - back_mono
    counts = conclude(fleet, runs)
    # the reconnected worker consumes again, unrestarted: the others stop consuming, and
    # jobs submitted now must all be run by it
    names = [fleet.node_name(h) for h in others]
    fleet.client.app.control.cancel_consumer("sandrun", destination=names, reply=True,
                                             timeout=10)
    probes = submit(fleet, 6, linger=0)
    probe_counts = conclude(fleet, probes)
    resumed = started_on(fleet, victim.proc.pid, back)()
    first = min((r.started for r in resumed), default=None)
    note = (f"{len(busy)} running at the cut; partition {PARTITION_SECONDS:.0f} s; "
            f"reconnected {reconnected:.1f} s after link up; first job on it "
            f"{(first - back) if first else float('nan'):.1f} s after; "
            f"{counts.reruns} run(s) ran again")
    scenario_report.record("hosts: worker host partitioned, reconnected", counts.submitted,
                           counts.completed, len(counts.lost), len(counts.duplicated),
                           note=note)
    # kombu gives the cut channel's unacked messages back while their jobs still run on
    # the cut host; the partition is shorter than the running lease (60 s), so each copy
    # waits for the lease, then finds the stored result: no job runs twice.
    assert not counts.lost and not counts.duplicated, counts.explain()
    assert counts.completed == counts.submitted, counts.explain()
    assert not probe_counts.lost and not probe_counts.duplicated, probe_counts.explain()
    assert victim.proc.poll() is None, "the partitioned worker must not have exited"
    probe_tokens = {r.token for r in fleet.ledger.runs.values()
                    if r.job_id in {p.id for p in probes}}
    assert {fleet.ledger.runs[t].worker for t in probe_tokens} == {victim.proc.pid}, (
        "the reconnected worker did not take the jobs submitted after the partition")


#: A removed host's jobs come back after the visibility timeout, and run once the dead
#: host's running leases lapse: keep both short here (the lease at its 10 s minimum).
REMOVAL_ENV = {"SANDRUN_VISIBILITY_TIMEOUT": "12", "SANDRUN_MAX_JOB_TIMEOUT": "7",
               "SANDRUN_VISIBILITY_MARGIN": "3", "SANDRUN_REDIS_HEALTH_CHECK_INTERVAL": "2",
               "SANDRUN_REDIS_SOCKET_TIMEOUT": "5", "SANDRUN_RUNNING_LEASE_SECONDS": "10"}


def test_a_worker_host_removed_mid_stream_loses_no_job(
        fleet: Fleet, scenario_report: ScenarioReport) -> None:
    doomed, *_ = fleet.net.workers
    workers = [fleet.start_worker(host, concurrency=2, **REMOVAL_ENV)
               for host in fleet.net.workers]
    runs = submit(fleet, JOBS, linger=0.5, timeout=7)
    busy = fleet.ledger.wait_for("the doomed host to run jobs",
                                 started_on(fleet, workers[0].proc.pid, 0))
    assert isinstance(busy, list)
    for pid in pids_in(doomed.name):  # every process of the host, then its link
        with contextlib.suppress(ProcessLookupError):  # a job's process that just ended
            os.kill(pid, signal.SIGKILL)
    removed = time.time()
    fleet.net.remove(doomed)
    killed = [r for r in fleet.ledger.running() if r.worker == workers[0].proc.pid]
    counts = conclude(fleet, runs)
    reruns = [fleet.ledger.of(r.job_id)[-1].started - removed for r in killed
              if len(fleet.ledger.of(r.job_id)) > 1]
    # kombu's Redis transport pops a message (BRPOP) before it records it as unacked: one
    # that the removed host had popped and not yet recorded is gone (README: "Choosing a
    # broker"). Such a job was never received by any worker; anything else lost is a bug.
    logs = "\n".join(worker.output() for worker in workers)
    in_fetch = [entry for entry in counts.lost if entry.split(":")[0] not in logs]
    note = (f"{len(killed)} running on the removed host; re-run elsewhere "
            f"{max(reruns) if reruns else float('nan'):.1f} s after (visibility 12 s); "
            f"{counts.reruns} run(s) ran again"
            + (f"; {len(in_fetch)} lost in kombu's BRPOP-before-unacked window "
               "(popped by the removed host, never received)" if in_fetch else ""))
    scenario_report.record("hosts: worker host removed mid-stream", counts.submitted,
                           counts.completed, len(counts.lost), len(counts.duplicated),
                           note=note)
    assert not counts.duplicated, counts.explain()
    assert len(in_fetch) <= 1 and len(counts.lost) == len(in_fetch), counts.explain()
    assert workers[0].proc.wait(10) == -signal.SIGKILL
    for run in killed:  # each job cut short on the removed host ran to its end elsewhere
        final = [r for r in fleet.ledger.of(run.job_id) if r.ended is not None]
        assert len(final) == 1 and final[0].worker != workers[0].proc.pid


@pytest.mark.parametrize("fleet", ["unix"], indirect=True)
def test_an_idle_worker_host_partitioned_consumes_again_once_reconnected(
        fleet: Fleet, scenario_report: ScenarioReport) -> None:
    """An idle worker waits in BRPOP: the cut leaves that connection half-open, which
    only the health check (a BRPOP overdue by 1 s + 2 s) and the socket options notice;
    once the link is back the worker must reconnect by itself and take jobs."""
    cut, *others = fleet.net.workers
    workers = [fleet.start_worker(host, concurrency=2, **FAULT_ENV)
               for host in fleet.net.workers]
    victim = workers[0]
    before = {p for p in peers(fleet) if p[0] == cut.address}
    fleet.net.partition(cut)
    time.sleep(PARTITION_SECONDS)
    fleet.net.reconnect(cut)
    back = time.time()
    fleet.client.app.control.cancel_consumer("sandrun", reply=True, timeout=10,
                                             destination=[fleet.node_name(h) for h in others])
    probes = submit(fleet, 6, linger=0)
    counts = conclude(fleet, probes)
    first = fleet.ledger.wait_for("a job on the reconnected host",
                                  started_on(fleet, victim.proc.pid, back))
    assert isinstance(first, list)
    recovered = min(r.started for r in first) - back
    new = {p for p in peers(fleet) if p[0] == cut.address} - before
    scenario_report.record("hosts: idle worker host partitioned, reconnected",
                           counts.submitted, counts.completed, len(counts.lost),
                           len(counts.duplicated),
                           note=f"partition {PARTITION_SECONDS:.0f} s; first job on it "
                                f"{recovered:.1f} s after link up; {len(new)} new "
                                f"connection(s) from it")
    assert not counts.lost and not counts.duplicated, counts.explain()
    assert victim.proc.poll() is None
    assert {fleet.ledger.runs[r.token].worker for r in fleet.ledger.runs.values()} == {
        victim.proc.pid}, "the reconnected worker did not take the jobs"
    assert new, "the worker kept only its connections from before the cut"
