"""Links that degrade rather than break: a slow worker link, a flapping broker link.

The same fleet and counting as ``test_host_faults``: 100 sandboxed ledger jobs through
the real client, completed / lost / duplicated against the ledger, one table row each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT
from tests.reliability.conftest import ScenarioReport
from tests.reliability.test_host_faults import FAULT_ENV, JOBS, conclude, submit
from tests.support.fleet import Fleet
from tests.support.ledger import job_code
from tests.support.netns import Host, loss_unavailable, netem_unavailable
from tests.support.slowlink import RELAY_PORT, DelayRelay
from worker.client.client import JobExecution
from worker.sandbox.launcher import dying_with_parent

NETEM = ("delay", "200ms", "loss", "1%")
LINGER = 0.3


def throughput(fleet: Fleet, runs: list[JobExecution], since: float) -> float:
    """Jobs per second from ``since`` (before the first submit) to the last job's end."""
    ends = [r.ended for run in runs for r in fleet.ledger.of(run.id) if r.ended is not None]
    return len(runs) / (max(ends) - since)


class SlowLink:
    """What makes one host's link to the broker slow: ``tc netem`` on its side of the
    link when the kernel has it; else a :class:`DelayRelay` its worker connects through
    for the delay, and iptables dropping 1% of the packets between the host and the
    relay for the loss (``how`` says which)."""

    def __init__(self, fleet: Fleet, host: Host) -> None:
        self.fleet, self.host = fleet, host
        self.reason = netem_unavailable()
        self.relay = None if self.reason is None else DelayRelay(
            fleet.net.broker.name, fleet.net.broker.address, fleet.broker.socket)
        self.env = {} if self.relay is None else {"SANDRUN_BROKER_URL": self.relay.url,
                                                  "SANDRUN_RESULT_BACKEND": self.relay.url}
        self.lossless = None if self.relay is None else loss_unavailable()
        if self.relay is None:
            self.how = "netem delay 200ms loss 1%"
        else:
            loss = (f"no loss ({self.lossless})" if self.lossless else
                    "iptables dropping 1% of its packets each way")
            self.how = f"a relay adding 100 ms each way and {loss} (no sch_netem here)"

    def slow_down(self) -> None:
        if self.relay is None:
            self.fleet.net.slow(self.host, *NETEM)
            return
        self.relay.delay = 0.1
        if self.lossless is None:
            self.fleet.net.lossy(self.host, 1.0, RELAY_PORT)

    def dropped(self) -> int | None:
        """Packets the loss rules dropped (None: netem, or no loss)."""
        if self.relay is None or self.lossless is not None:
            return None
        return self.fleet.net.dropped(self.host)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()


def test_a_slow_worker_link_costs_about_its_hosts_share_and_no_job(
        fleet: Fleet, scenario_report: ScenarioReport) -> None:
    """One of three ``-c 1`` worker hosts gets 200 ms more round trip and 1% packet loss
    to the broker: the jobs still complete once each; the fleet's rate is measured
    before and with it (reported, not asserted: at worst that host's third is lost, so
    the ideal ratio is at least 0.67)."""
    slow, *_ = fleet.net.workers
    link = SlowLink(fleet, slow)
    try:
        for host in fleet.net.workers:
            fleet.start_worker(host, concurrency=1, **(link.env if host is slow else {}))
        baseline = int(JOBS * 0.4)
        since = time.time()
        before = submit(fleet, baseline, linger=LINGER)
        first = conclude(fleet, before)
        fast_rate = throughput(fleet, before, since)
        link.slow_down()
        since = time.time()
        after = submit(fleet, JOBS - baseline, linger=LINGER)
        second = conclude(fleet, after)
        slow_rate = throughput(fleet, after, since)
        dropped = link.dropped()
    finally:
        link.close()
    slow_pid = fleet.workers[slow.name].proc.pid
    on_slow = sum(1 for run in after for r in fleet.ledger.of(run.id) if r.worker == slow_pid)
    note = (f"{fast_rate:.2f} jobs/s, then {slow_rate:.2f} with {link.how} on 1 of 3 "
            f"hosts: ratio {slow_rate / fast_rate:.2f} (ideal >= 0.67); the slow host ran "
            f"{on_slow} of {len(after)}"
            + (f"; {dropped} packets dropped" if dropped is not None else ""))
    print(note)
    lost = len(first.lost) + len(second.lost)
    duplicated = len(first.duplicated) + len(second.duplicated)
    scenario_report.record("hosts: slow worker link", JOBS, first.completed + second.completed,
                           lost, duplicated, note=note)
    assert not lost and not duplicated, first.explain() + "\n" + second.explain()


#: The producer gives up on a publish after 2 s (BrokerUnavailable): shorter than a flap,
#: so some publishes must fail, and a dead connection is noticed in 2 s, not 30.
PRODUCER_ENV = {"SANDRUN_PUBLISH_RETRY_SECONDS": "2", "SANDRUN_REDIS_SOCKET_TIMEOUT": "2",
                "SANDRUN_REDIS_HEALTH_CHECK_INTERVAL": "1"}
FLAPS = 3
DOWN_SECONDS = 3.0
UP_SECONDS = 2.0
#: A publish begun this long before the link went down may have reached Redis.
REPLY_WINDOW = 0.05


def outcomes(path: Path) -> list[dict[str, object]]:
    """The producer's lines so far (a last one half-written is left for later)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


def wait_lines(path: Path, what: str, enough: int, timeout: float = 90) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while len(lines := outcomes(path)) < enough:
        assert time.monotonic() < deadline, f"the producer did not get to {what}"
        time.sleep(0.1)
    return lines


def publish_through_flaps(fleet: Fleet, host: Host, tmp_path: Path
                          ) -> tuple[list[dict[str, object]], list[float], list[float]]:
    """Run the producer in ``host`` and flap the broker host's link under it: its lines,
    and the times the link went down and came back up."""
    code = tmp_path / "job.py"
    code.write_text(job_code(0, linger=0.1, host=fleet.ledger_server.host))
    out = tmp_path / "published.jsonl"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SANDRUN_", "CELERY_"))},
           "PYTHONPATH": str(ROOT), **PRODUCER_ENV}
    log = tmp_path / "producer.log"
    with open(log, "wb") as fh:
        producer = subprocess.Popen(dying_with_parent(host.command([
            sys.executable, "-m", "tests.support.producer", fleet.url, str(code), str(JOBS),
            "0.1", str(out)])), env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_lines(out, "its tenth publish", 10)
        downs: list[float] = []
        ups: list[float] = []
        for _ in range(FLAPS):
            downs.append(time.time())
            fleet.net.flap(down=True)
            time.sleep(DOWN_SECONDS)
            fleet.net.flap(down=False)
            ups.append(time.time())
            time.sleep(UP_SECONDS)
        lines = wait_lines(out, "its last publish", JOBS + 1)
        assert producer.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    return lines, downs, ups


@pytest.mark.parametrize("fleet", ["unix"], indirect=True)
def test_publishing_while_the_broker_link_flaps_loses_nothing_accepted(
        fleet: Fleet, scenario_report: ScenarioReport, tmp_path: Path) -> None:
    """A producer on its own host publishes 100 jobs while the broker host's link goes
    down 3 s and up 2 s, three times. Each submit returns or raises BrokerUnavailable
    (nothing else), and every job whose submit returned completes exactly once."""
    *hosts, producer_host = fleet.net.workers
    for host in hosts:
        fleet.start_worker(host, concurrency=2, **FAULT_ENV)
    lines, downs, ups = publish_through_flaps(fleet, producer_host, tmp_path)
    results = [line for line in lines if "job" in line]
    others = [line for line in results if line["outcome"] not in ("accepted", "unavailable")]
    accepted = [str(line["job"]) for line in results if line["outcome"] == "accepted"]
    refused = [line for line in results if line["outcome"] == "unavailable"]
    counts = conclude(fleet, [fleet.client.execution(job) for job in accepted])
    ran_anyway = [line for line in results
                  if line["outcome"] == "unavailable" and fleet.ledger.of(str(line["job"]))]
    accepts = [float(str(line["at"])) for line in results if line["outcome"] == "accepted"]
    recovered = max(min(at for at in accepts if at > up) - up for up in ups)
    note = (f"{FLAPS} flaps ({DOWN_SECONDS:.0f} s down, {UP_SECONDS:.0f} s up); "
            f"{len(accepted)} accepted, {len(refused)} BrokerUnavailable "
            f"({len(ran_anyway)} of those ran anyway); publishes accepted again at most "
            f"{recovered:.1f} s after link up")
    scenario_report.record("hosts: broker link flapping while publishing", len(accepted),
                           counts.completed, len(counts.lost), len(counts.duplicated),
                           note=note)
    print(note)
    assert not others, f"a submit raised something other than BrokerUnavailable: {others}"
    assert refused, "no publish met a flap: the scenario did not test anything"
    assert not counts.lost and not counts.duplicated, counts.explain()
    # A refused publish must not be queued later from a dead connection's send buffer
    # (TCP_USER_TIMEOUT, worker/broker/urls.py). Only a request that reached Redis just
    # as the link went down, its reply lost, can be refused yet queued: none other.
    stale = [line for line in ran_anyway
             if not any(0 <= down - float(str(line["sent"])) < REPLY_WINDOW for down in downs)]
    assert not stale, f"refused publishes queued after all: {stale}"
