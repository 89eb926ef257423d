"""Jobs through a real private Redis and real prefork ``celery worker`` processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer
from tests.integration.conftest import RECORDING, Worker, WorkerFactory, broker_url
from worker.client.client import Sandrun
from worker.models import Job
from worker.stores.storage import RedisStorageBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory) -> Worker:
    return start_worker(concurrency=2, SANDRUN_PLUGINS=json.dumps([RECORDING]),
                        SANDRUN_SECRET_TOKEN="s3cr3t", CELERY_EXTRA="leak")


@pytest.fixture
def client(broker: RedisServer, worker: Worker) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[RECORDING]) as made:
        yield made


def events(broker: RedisServer) -> list[dict[str, Any]]:
    store = RedisStorageBackend(broker.client()).for_plugin("recording")
    return [store.get(key) for key in store.keys("event:*")]


def test_each_hook_fires_once_in_the_right_process_and_order(
        client: Sandrun, broker: RedisServer, worker: Worker) -> None:
    run = client.job().code("print('hi')").submit()
    result = run.wait(timeout=30)
    assert result.status == "completed" and result.stdout == "hi\n"
    producer = client.manager.storage.for_plugin("recording")
    local = [producer.get(k) for k in producer.keys("event:*")]
    assert [e["hook"] for e in local] == ["on_init", "on_build", "on_submit"]
    mine = [e for e in events(broker) if e["id"] == run.id]
    assert [e["hook"] for e in mine] == ["on_execute", "on_result"]
    assert mine[0]["pid"] == mine[1]["pid"] != local[0]["pid"]
    assert mine[0]["pid"] in worker.pool_pids()
    inits = [e["pid"] for e in events(broker) if e["hook"] == "on_init"]
    assert sorted(inits) == sorted([worker.proc.pid, *worker.pool_pids()])


def test_on_result_changes_what_is_stored(client: Sandrun) -> None:
    run = client.job().code("print('original')").labels({"rewrite": "1"}).submit()
    assert run.wait(timeout=30).stdout == "rewritten by plugin"
    assert client.execution(run.id).result().stdout == "rewritten by plugin"  # type: ignore[union-attr]


def test_on_execute_veto_never_runs_the_job(client: Sandrun, broker: RedisServer,
                                            tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')"
    run = client.job().code(code).labels({"veto": "1"}).submit()
    result = run.wait(timeout=30)
    assert result.status == "rejected" and "vetoed" in (result.error.message if result.error
                                                         else "")
    # The result is stored when the task returns, after the body would have run, and the
    # job was delivered once: no later run can still write the marker.
    assert [e["hook"] for e in events(broker) if e["id"] == run.id].count("on_execute") == 1
    assert not marker.exists()


def test_user_task_gets_the_same_hooks(client: Sandrun, broker: RedisServer) -> None:
    handle = client.app.send_task("tests.add", args=[2, 3])
    assert handle.get(timeout=30) == 5
    mine = [e for e in events(broker) if e["id"] == handle.id]
    assert [(e["hook"], e.get("task")) for e in mine] == [("on_execute", "tests.add"),
                                                          ("on_result", None)]


def test_user_task_error_goes_through_on_error(client: Sandrun, broker: RedisServer) -> None:
    handle = client.app.send_task("tests.boom")
    with pytest.raises(Exception, match="boom from a user task"):
        handle.get(timeout=30)
    mine = [e["hook"] for e in events(broker) if e["id"] == handle.id]
    assert mine == ["on_execute", "on_error"]


def test_failed_job_goes_through_on_error(client: Sandrun, broker: RedisServer) -> None:
    run = client.job().code("raise SystemExit(4)").submit()
    result = run.wait(timeout=30)
    assert (result.status, result.exit_code) == ("failed", 4)
    mine = [e for e in events(broker) if e["id"] == run.id]
    assert [e["hook"] for e in mine] == ["on_execute", "on_error", "on_result"]
    assert mine[1]["error"] == "JobFailed"


def test_redelivered_finished_job_is_not_run_again(client: Sandrun, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    job = Job(code=f"open({str(counter)!r}, 'a').write('run\\n')")
    first = client.submit(job).wait(timeout=30)
    assert first.status == "completed"
    payload = job.model_dump(mode="json")
    again = client.app.send_task("sandrun.run_job", args=[payload], task_id=job.id)
    assert again.get(timeout=30)["id"] == job.id
    assert counter.read_text() == "run\n"


def test_worker_environment_never_reaches_the_job(client: Sandrun) -> None:
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    result = client.job().code(code).env({"MINE": "yes"}).submit().wait(timeout=30)
    env = json.loads(result.stdout)
    assert env["MINE"] == "yes" and env["CUDA_VISIBLE_DEVICES"] == ""
    # The two the job is told on purpose: its id, and the descriptor it reports progress on.
    told = {"SANDRUN_JOB_ID": result.id, "SANDRUN_PROGRESS_FD": env.get("SANDRUN_PROGRESS_FD")}
    assert str(told["SANDRUN_PROGRESS_FD"]).isdigit()
    leaked = [k for k, v in env.items() if k.startswith(("SANDRUN_", "CELERY_"))
              and told.get(k) != v]
    assert leaked == []
    assert "s3cr3t" not in result.stdout and "redis" not in result.stdout.lower()


def test_outputs_are_collected_and_downloadable(client: Sandrun, tmp_path: Path) -> None:
    code = ("import os; os.makedirs('out'); open('out/a.txt','w').write('A');"
            "open('skip.log','w').write('x'); os.symlink('/etc/passwd', 'out/link')")
    run = client.job().code(code).outputs(["out/"]).submit()
    result = run.wait(timeout=30)
    assert [o.path for o in result.outputs] == ["out/a.txt"]
    assert run.download("out/a.txt", tmp_path).read_text() == "A"


def test_cancel_terminates_a_running_job(client: Sandrun, tmp_path: Path) -> None:
    run = client.job().code("import time; print('started', flush=True); time.sleep(60)"
                            ).timeout(120).submit()
    deadline = time.monotonic() + 20
    while run.status() != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    run.cancel()
    assert run.wait(timeout=30).status == "cancelled"


def test_invalid_job_payload_is_an_error_not_a_hang(broker: RedisServer, worker: Worker) -> None:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        handle = client.app.send_task("sandrun.run_job", args=[{"code": "1", "timeout": -1}])
        stored = handle.get(timeout=30)
        assert stored["status"] == "rejected" and stored["error"]["type"] == "InvalidJob"
        assert "timeout: Input should be greater than 0" in stored["error"]["message"]


def test_attempt_counter_is_cleared_after_completion(client: Sandrun,
                                                     broker: RedisServer) -> None:
    run = client.job().code("print(1)").submit()
    run.wait(timeout=30)
    assert redis.Redis(unix_socket_path=str(broker.socket)).get(
        f"sandrun:attempts:{run.id}:1") is None


def test_on_destroy_runs_in_each_pool_process_at_shutdown(start_worker: WorkerFactory,
                                                          broker: RedisServer) -> None:
    other = start_worker(name="short-lived", concurrency=2, queues="short",
                         SANDRUN_PLUGINS=json.dumps([RECORDING]))
    pids = sorted(other.pool_pids())
    assert len(pids) == 2
    assert other.stop() == 0
    destroyed = sorted(e["pid"] for e in events(broker)
                       if e["hook"] == "on_destroy" and e["pid"] in pids)
    assert destroyed == pids
