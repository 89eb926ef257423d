"""Cancel anywhere, remembered: a job cancelled while queued, held by the scheduling
plugin, deferred, retrying with a countdown or running ends ``cancelled`` and its side
effect (a file it would write) never appears.

``cancel`` writes a record in the result backend's Redis before Celery's broadcast, so
a worker started after the cancel (mingle on or off) skips the job, and the beat never
publishes a held one. Each test waits for the positive sign that the delivery was
handled (the worker's ``job_cancelled_skipped`` line, Celery's ``Discarding revoked
task`` when the worker heard the broadcast, or the job's process gone) before it
looks for the file, so "never appears" is checked after the last chance to write it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from plugins.scheduling import SchedulingPlugin
from tests.conftest import RedisServer
from tests.integration.conftest import Worker, WorkerFactory, broker_url, worker_env
from worker import PluginSpec
from worker.client.client import JobExecution, Sandrun
from worker.errors import InvalidJob
from worker.models import Job

pytestmark = pytest.mark.slow


def until(condition: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {condition} within {timeout:g} s"
        time.sleep(0.05)


def writes(mark: Path) -> str:
    """Job code whose side effect is ``mark``."""
    return f"open({str(mark)!r}, 'w').write('ran')"


#: What a worker logs when it drops a cancelled delivery because it heard the broadcast:
#: an ETA message it held, or one its pool process had begun (killed with it).
BROADCAST_HANDLED = ("Discarding revoked task", "Terminating ")


def skipped(process: Worker, job_id: str, *, by_record: bool = False) -> bool:
    """Whether ``process`` logged that it dropped ``job_id`` as cancelled (``by_record``:
    from the persisted record, not from the broadcast it heard)."""
    handled = ("job_cancelled_skipped",) if by_record else (
        "job_cancelled_skipped", *BROADCAST_HANDLED)
    return any(job_id in line and any(h in line for h in handled)
               for line in process.output().splitlines())


def last_delivery_dropped(process: Worker, job_id: str) -> bool:
    """Whether every delivery of ``job_id`` that ``process`` received was dropped: the last
    line naming it says so (none says it was received after that)."""
    lines = [line for line in process.output().splitlines() if job_id in line]
    return bool(lines) and any(h in lines[-1]
                               for h in ("job_cancelled_skipped", *BROADCAST_HANDLED))


def ended_cancelled(run: JobExecution, mark: Path) -> None:
    assert run.status() == "cancelled"
    result = run.wait(timeout=10)
    assert (result.status, result.outcome) == ("cancelled", "cancelled")
    assert not mark.exists()


@pytest.fixture
def client(broker: RedisServer) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


def test_cancelled_while_queued_is_skipped_by_a_worker_started_later(
        client: Sandrun, start_worker: WorkerFactory, broker: RedisServer,
        tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    run = client.job().code(writes(mark)).queue("later").submit()
    assert run.cancel() == "queued"  # no worker consumes "later" yet
    assert redis.Redis(unix_socket_path=str(broker.socket)).ttl(f"sandrun:revoked:{run.id}") > 0
    # `sandrun worker` as the Procfile starts it, without mingle: no worker to learn from
    worker = start_worker(concurrency=1, name="later", queues="later", cli=True,
                          SANDRUN_WORKER_MINGLE="0")
    try:
        until("skipped", lambda: skipped(worker, run.id, by_record=True) or mark.exists())
    finally:
        worker.stop()
    ended_cancelled(run, mark)
    # the record was read in the round trip that claims the job's lease: given back
    assert not redis.Redis(unix_socket_path=str(broker.socket)).exists(f"sandrun:lease:{run.id}")


@pytest.mark.parametrize("mingle", ["1", "0"], ids=["mingle-on", "mingle-off"])
def test_a_worker_that_joins_later_skips_a_job_cancelled_while_queued(
        start_worker: WorkerFactory, client: Sandrun, tmp_path: Path, mingle: str) -> None:
    first = start_worker(concurrency=1, name=f"first-{mingle}")
    mark = tmp_path / "ran"
    busy = client.job().code("import time; time.sleep(120)").timeout(150).submit()
    until("running", lambda: busy.status() == "running")
    queued: JobExecution = client.job().code(writes(mark)).submit()
    assert queued.cancel() == "queued"
    inspect = client.app.control.inspect(
        destination=[f"first-{mingle}@{socket.gethostname()}"])
    until("revoked on the first worker",
          lambda: any(queued.id in ids for ids in (inspect.revoked() or {}).values()))
    joiner = start_worker(concurrency=1, name=f"joiner-{mingle}", cli=True,
                          SANDRUN_WORKER_MINGLE=mingle)
    try:  # mingle on: it learns the id from the first worker; off: from the record
        until("skipped by the joiner",
              lambda: skipped(joiner, queued.id, by_record=mingle == "0") or mark.exists())
        ended_cancelled(queued, mark)
    finally:
        assert busy.cancel() == "running"
        joiner.stop()
        first.stop()


def test_cancelled_while_held_by_the_scheduling_plugin_is_never_published(
        broker: RedisServer, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"broker_url": broker_url(broker), "eta_horizon": 1.0}
    plugins = json.dumps([{"name": "scheduling", "config": config}])
    worker = start_worker(concurrency=1, name="held", queues="held", SANDRUN_PLUGINS=plugins)
    beat = Worker([sys.executable, "-m", "worker.cli", "--log-level", "info", "beat",
                   "--interval", "0.1"], worker_env(broker, tmp_path, SANDRUN_PLUGINS=plugins),
                  tmp_path / "beat.log")
    mark = tmp_path / "ran"
    try:
        with Sandrun.create(broker_url=broker_url(broker),
                            plugins=[PluginSpec("scheduling", config)]) as producer:
            plugin = producer.manager.get("scheduling")
            assert isinstance(plugin, SchedulingPlugin)
            run = producer.submit(Job(code=writes(mark), queue="held",
                                      scheduled_time=datetime.now(UTC) + timedelta(seconds=3)))
            assert plugin.store.held_ids() == [run.id]
            assert run.cancel() == "held"
            until("claimed and dropped by the beat", lambda: skipped(beat, run.id))
            assert plugin.store.held_ids() == []
            assert not plugin.store.client.hexists("sandrun:scheduling:payload", run.id)
            assert not plugin.store.client.llen("held")  # never reached the broker
            ended_cancelled(run, mark)
    finally:
        beat.stop()
        worker.stop()
    assert run.id not in worker.output()


def test_cancelled_while_in_a_fair_list_is_never_published(
        broker: RedisServer, start_worker: WorkerFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # this process pumps, as a producer does: its plugin reads the records in the result
    # backend it is configured with (tests/conftest.py sets an in-memory one by default)
    monkeypatch.setenv("SANDRUN_RESULT_BACKEND", broker_url(broker))
    config = {"broker_url": broker_url(broker), "strategy": "fair", "fair_window": 1}
    first, mark = tmp_path / "first", tmp_path / "ran"
    with Sandrun.create(broker_url=broker_url(broker),
                        plugins=[PluginSpec("scheduling", config)]) as producer:
        plugin = producer.manager.get("scheduling")
        assert isinstance(plugin, SchedulingPlugin)
        moved = producer.submit(Job(code=writes(first), queue="fair", labels={"tenant": "a"}))
        kept = producer.submit(Job(code=writes(mark), queue="fair", labels={"tenant": "a"}))
        assert plugin.store.pending("fair") == 1  # the window holds one: the other waits
        assert kept.cancel() == "held"
        assert moved.cancel() == "queued"
        worker = start_worker(concurrency=1, name="fair", queues="fair", SANDRUN_PLUGINS=(
            json.dumps([{"name": "scheduling", "config": config}])))
        try:
            until("the moved one skipped", lambda: skipped(worker, moved.id, by_record=True))
            assert plugin.pump("fair") == 0  # room again: the kept one is claimed, dropped
            assert plugin.store.pending("fair") == 0
            assert not plugin.store.client.llen("fair")
        finally:
            worker.stop()
        ended_cancelled(kept, mark)
        ended_cancelled(moved, first)
    assert kept.id not in worker.output()


def test_cancelled_while_deferred_is_dropped_at_its_next_delivery(
        client: Sandrun, start_worker: WorkerFactory, tmp_path: Path) -> None:
    config = {"max_concurrent": 1, "defer_seconds": 0.2}
    worker = start_worker(concurrency=2, name="defer", queues="defer", SANDRUN_PLUGINS=json.dumps(
        [{"name": "scheduling", "config": config}]))
    go, mark = tmp_path / "go", tmp_path / "ran"
    busy = client.job().code(f"import os, time\nwhile not os.path.exists({str(go)!r}): "
                             "time.sleep(0.05)").queue("defer").timeout(60).submit()
    try:
        until("running", lambda: busy.status() == "running")
        run = client.job().code(writes(mark)).queue("defer").submit()
        until("deferred", lambda: run.id in worker.output() and "job_deferred" in worker.output())
        assert run.cancel() in {"queued", "scheduled"}  # between re-publishes, or in an ETA
        until("dropped", lambda: skipped(worker, run.id))
        go.touch()  # the lease is free: a deferred copy that survived would now run
        assert busy.wait(timeout=30).status == "completed"
        after = client.job().code("print(1)").queue("defer").submit()  # one lease later
        assert after.wait(timeout=30).status == "completed"
        assert last_delivery_dropped(worker, run.id), worker.output()[-3000:]
        ended_cancelled(run, mark)
    finally:
        go.touch()
        worker.stop()


def test_cancelled_while_retrying_with_a_countdown_never_runs_again(
        client: Sandrun, start_worker: WorkerFactory, tmp_path: Path) -> None:
    retry = {"name": "retry", "config": {"max_attempts": 3, "backoff": "fixed", "base_delay": 2}}
    worker = start_worker(concurrency=1, name="retry", queues="retry",
                          SANDRUN_PLUGINS=json.dumps([retry]))
    first, mark = tmp_path / "first", tmp_path / "ran"
    code = (f"import os, sys\nif os.path.exists({str(first)!r}):\n    {writes(mark)}\n"
            f"else:\n    open({str(first)!r}, 'w').close(); sys.exit(3)\n")
    try:
        run = client.job().code(code).queue("retry").submit()
        until("retrying", lambda: run.status() == "retrying")
        assert run.cancel() == "retrying"
        until("dropped", lambda: skipped(worker, run.id))
        ended_cancelled(run, mark)
    finally:
        worker.stop()
    assert first.exists()


def test_cancelled_while_running_is_terminated_before_its_side_effect(
        client: Sandrun, start_worker: WorkerFactory, tmp_path: Path) -> None:
    worker = start_worker(concurrency=1, name="running", queues="running")
    started, go, mark = tmp_path / "pid", tmp_path / "go", tmp_path / "ran"
    code = (f"import os, time\nopen({str(started)!r}, 'w').write(str(os.getpid()))\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n{writes(mark)}\n")
    try:
        run = client.job().code(code).queue("running").timeout(60).submit()
        until("started", lambda: started.exists() and started.read_text() != "")
        pid = int(started.read_text())
        assert os.path.exists(f"/proc/{pid}")
        assert run.cancel() == "running"
        until("terminated", lambda: not os.path.exists(f"/proc/{pid}"))
        go.touch()  # the job's last chance to write its mark, had it survived
        ended_cancelled(run, mark)
        assert run.cancel() == "finished"  # a second cancel changes nothing
    finally:
        go.touch()
        worker.stop()


def test_a_users_own_task_cancelled_while_queued_never_runs(
        client: Sandrun, start_worker: WorkerFactory, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    sent = client.app.send_task("tests.touch", args=[str(mark), "ran"], queue="tasks")
    assert client.execution(sent.id).cancel() == "queued"
    worker = start_worker(concurrency=1, name="tasks", queues="tasks")
    try:
        until("skipped", lambda: skipped(worker, sent.id, by_record=True) or mark.exists())
    finally:
        worker.stop()
    assert sent.get(timeout=10)["status"] == "cancelled"  # the JobResult cancel stored
    assert not mark.exists()


def test_a_job_id_that_is_not_one_is_refused(client: Sandrun) -> None:
    with pytest.raises(InvalidJob, match="is not a job id"):
        client.execution("../../etc*").cancel()
