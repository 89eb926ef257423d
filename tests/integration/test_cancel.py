"""A job cancelled while queued never runs, also on a worker that joins the fleet later.

``sandrun cancel`` is Celery's revoke, a broadcast to the workers that are running:
each keeps the id in memory (and one stores the job as REVOKED, which no worker
reads before running a job). A worker started afterwards learns the id from them
at start (mingle), which is why celeryconfig keeps mingle on; with it off, the
joining worker runs the cancelled job. (When revoked ids are kept outside the
workers, the "off" case changes and mingle can go.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import WorkerFactory, broker_url
from worker.client.client import JobExecution, Sandrun

pytestmark = pytest.mark.slow


def until(condition: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {condition} within {timeout:g} s"
        time.sleep(0.1)


@pytest.mark.parametrize("mingle", ["1", "0"], ids=["mingle-on", "mingle-off"])
def test_a_worker_that_joins_later_skips_a_job_cancelled_while_queued(
        start_worker: WorkerFactory, broker: RedisServer, tmp_path: Path, mingle: str) -> None:
    first = start_worker(concurrency=1, name=f"first-{mingle}")
    mark = tmp_path / "ran"
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        busy = client.job().code("import time; time.sleep(120)").timeout(150).submit()
        until("running", lambda: busy.status() == "running")
        queued: JobExecution = client.job().code(f"open({str(mark)!r}, 'w').write('ran')").submit()
        queued.cancel()
        inspect = client.app.control.inspect(
            destination=[f"first-{mingle}@{socket.gethostname()}"])
        until("revoked on the first worker",
              lambda: any(queued.id in ids for ids in (inspect.revoked() or {}).values()))
        # `sandrun worker`, as the Procfile starts it: mingle as celeryconfig says
        joiner = start_worker(concurrency=1, name=f"joiner-{mingle}", cli=True,
                              SANDRUN_WORKER_MINGLE=mingle)
        try:
            if mingle == "1":
                until("skipped by the joiner",
                      lambda: f"Discarding revoked task: sandrun.run_job[{queued.id}]"
                      in joiner.output())
                assert "mingle: sync with 1 nodes" in joiner.output()
                assert not mark.exists()
                assert queued.status() == "cancelled"
            else:
                until("run by the joiner", mark.exists)
        finally:
            busy.cancel()
            joiner.stop()
            first.stop()
