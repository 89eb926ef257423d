"""Attacks from inside jobs, through a real ``celery worker``, a real client and a Redis
that has a password: fork bombs, writes outside the job directory, connections to the
host's loopback, hunting for the broker password. After each, the worker still serves."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Worker, WorkerFactory, broker, start_worker  # noqa: F401
from tests.support.forked import BOUNDED_FORKS
from tests.support.redteam import SecretBroker
from worker.client.client import Sandrun
from worker.models import Job, JobResult
from worker.sandbox.isolation import job_user_ids, probe

pytestmark = pytest.mark.slow
SUPPORT = probe(job_user_ids("nobody"))
MAX_PROCESSES = 32


@pytest.fixture(scope="module")
def secret_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretBroker]:
    server = SecretBroker(tmp_path_factory.mktemp("secret-broker"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker(start_worker: WorkerFactory, secret_broker: SecretBroker) -> Worker:  # noqa: F811
    return start_worker(
        concurrency=1, SANDRUN_BROKER_URL=secret_broker.url, SANDRUN_JOB_USER="nobody",
        SANDRUN_JOB_UIDS="200000-200999", SANDRUN_FILESYSTEM_ISOLATION="auto",
        SANDRUN_NETWORK_ISOLATION="required" if SUPPORT.network else "off",
        SANDRUN_MAX_PROCESSES=str(MAX_PROCESSES), AWS_SECRET_ACCESS_KEY=secret_broker.password,
        REDIS_PASSWORD=secret_broker.password)


@pytest.fixture(scope="module")
def client(worker: Worker, secret_broker: SecretBroker) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=secret_broker.url, plugins=[]) as made:
        yield made


def run(client: Sandrun, job: Job) -> JobResult:
    """Run ``job``, then check the worker still serves the next one."""
    result = client.submit(job).wait(timeout=60)
    follow_up = client.job().code("print('still serving')").submit().wait(timeout=30)
    assert (follow_up.status, follow_up.stdout) == ("completed", "still serving\n")
    return result


def leftovers(token: str) -> list[str]:
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if token.encode() in Path(path).read_bytes():
                found.append(path)
    return found


BOMBS = {"python3": "import os\nwhile True:\n    os.fork()\n", "bash": ":(){ :|:& };:"}


@pytest.mark.skipif(SUPPORT.process_limit != "per-job",
                    reason=f"no per-job process limit here: {SUPPORT.notes}")
def test_fork_bombs_end_at_the_process_limit_and_leave_nothing(client: Sandrun) -> None:
    bounded = run(client, Job(code=BOUNDED_FORKS, timeout=20))
    # before any real bomb; in a view bubblewrap's own processes count too (one or two)
    refused = int(bounded.stdout.removeprefix("refused after "))
    assert MAX_PROCESSES - 4 <= refused <= MAX_PROCESSES - 1, bounded.stdout
    for interpreter, code in BOMBS.items():
        token = f"bomb-{uuid.uuid4().hex}"
        result = run(client, Job(code=code, interpreter=interpreter, args=[token], timeout=3,
                                 cpu_seconds=3))
        assert result.execution_time is not None and result.execution_time < 5
        assert result.outcome in ({"process_limit"} if interpreter == "python3" else
                                  {"process_limit", "completed"}), result.stderr[-300:]
        assert leftovers(token) == []
        if "view" not in (result.isolation or ""):  # in a view they die with its namespace
            assert "[sandrun: killed" in result.stderr


ESCAPES = """
import os, sys
for path in (sys.argv[1] + "/planted", "/tmp/sandrun-escape-%d" % os.getpid(),
             os.path.expanduser("~/../planted")):
    try:
        open(path, "w").close()
        print("wrote", path)
    except OSError as exc:
        print("denied", exc.errno)
open(os.path.expanduser("~/inside.txt"), "w").write("ok")
"""


@pytest.mark.skipif(not SUPPORT.landlock_abi and not SUPPORT.view,
                    reason=f"no filesystem isolation here: {SUPPORT.notes}")
def test_writes_outside_the_job_directory_fail(client: Sandrun) -> None:
    with tempfile.TemporaryDirectory() as outside:
        os.chmod(outside, 0o777)  # the job user's permissions alone would allow it
        result = run(client, Job(code=ESCAPES, args=[outside]))
        assert os.listdir(outside) == []
    assert result.status == "completed", result.stderr
    labels = (result.isolation or "").split("+")
    if "view" in labels:  # the host's directory is not there; /tmp and above are its own
        lines = result.stdout.splitlines()
        assert lines[0] == "denied 2" and all(line.startswith("wrote") for line in lines[1:])
        assert not glob.glob("/tmp/sandrun-jobs/*/planted")
    else:
        assert result.stdout == "denied 13\n" * 3 and "filesystem" in labels
    assert [o.path for o in result.outputs] == ["inside.txt"]
    assert not glob.glob("/tmp/sandrun-escape-*")


CONNECT = """
import socket, sys
for port in sys.argv[1:]:
    try:
        socket.create_connection(("127.0.0.1", int(port)), 2).close()
        print("connected", port)
    except OSError as exc:
        print("refused", exc.errno)
"""


@pytest.mark.skipif(not SUPPORT.network, reason=f"no network isolation here: {SUPPORT.notes}")
def test_the_hosts_loopback_servers_are_out_of_reach(client: Sandrun,
                                                     secret_broker: SecretBroker) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        ports = [str(server.getsockname()[1]), str(secret_broker.port)]
        result = run(client, Job(code=CONNECT, args=ports))
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.stdout.count("refused") == 2, result.stdout
    assert "network" in (result.isolation or "").split("+")


HUNT = """
import json, os
found = {"env": dict(os.environ)}
for path in ["/proc/%s/%s" % (pid, part) for pid in os.listdir("/proc") if pid.isdigit()
             for part in ("environ", "cmdline")]:
    try:
        data = open(path, "rb").read().decode(errors="replace")
    except OSError:
        continue
    if "redis" in data.lower() or "pw-" in data or "SANDRUN" in data:
        found[path] = data
print(json.dumps(found))
"""


def test_the_broker_password_stays_out_of_jobs_and_results(
        client: Sandrun, worker: Worker, secret_broker: SecretBroker) -> None:
    handle = client.submit(Job(code=HUNT))
    result = handle.wait(timeout=60)
    assert result.status == "completed", result.stderr
    found = json.loads(result.stdout)
    assert not [k for k in found["env"] if k.startswith(("SANDRUN_B", "CELERY", "REDIS", "AWS"))]
    stored = redis.Redis.from_url(secret_broker.url).get(f"celery-task-meta-{handle.id}")
    assert stored is not None and result.id.encode() in stored
    for text in (result.model_dump_json(), stored.decode(), worker.output()):
        assert secret_broker.password not in text
    own = Path(f"/proc/{worker.proc.pid}/environ").read_bytes()
    assert secret_broker.password.encode() in own  # it was there to be found
