"""A fleet across hosts: workers on their own network namespaces (``fleet``).

Each worker host reaches the broker host (Redis on 10.233.71.1:6379) over its own veth
link; the side-effect ledger listens on the broker host too, so a job's reports cross
the same link (``tests.support.fleet``). Every scenario submits sandboxed ledger jobs
through the producer client and counts, like the reliability tier's worker faults,
what completed, what was lost and what was duplicated.
"""

from __future__ import annotations

import subprocess

from tests.reliability.conftest import ScenarioReport
from tests.support.fleet import REDIS_PORT, Fleet
from tests.support.ledger import job_code
from tests.support.results import tally
from worker.models import JobResult


def connected_hosts(fleet: Fleet) -> set[str]:
    """The addresses with a TCP connection to the broker host's Redis, seen from it."""
    out = subprocess.run(["ip", "netns", "exec", fleet.net.broker.name, "ss", "-Htn",
                          "state", "established", "sport", f"= :{REDIS_PORT}"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


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
