"""Real worker processes for integration tests: a private redis-server per module and
``celery worker`` subprocesses (prefork) that are always stopped, even on failure.

``stack`` runs a module twice, once per broker: on its private Redis alone, and on a
private virtual host of the shared RabbitMQ with that Redis as result backend and
store (``tests.support.rabbit``); ``start_stack_worker`` starts workers on it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RedisServer, private_redis
from tests.support.rabbit import private_vhost
from worker.client.client import Sandrun
from worker.sandbox.launcher import dying_with_parent

ROOT = Path(__file__).resolve().parents[2]
RECORDING = "tests.support.recording:RecordingPlugin"


class Worker:
    """One ``celery worker`` process; ``stop`` ends it and its pool, whatever happened."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(dying_with_parent(argv), env=env, cwd=ROOT, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"worker did not become ready:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def pool_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._fh.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with private_redis(tmp_path_factory.mktemp("broker")) as server:
        yield server


@dataclass
class Stack:
    """The brokers of one run of a module: ``kind`` is ``redis`` or ``rabbitmq``; ``redis``
    is the private Redis (results and stores, and the broker when kind is redis)."""

    kind: str
    redis: RedisServer
    url: str

    @property
    def backend(self) -> str:
        return broker_url(self.redis)

    def client(self, **kwargs: object) -> Sandrun:
        """A producer on this stack (``plugins`` etc. as for ``Sandrun.create``)."""
        return Sandrun.create(broker_url=self.url, result_backend=self.backend, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    with private_redis(tmp_path_factory.mktemp("stack")) as server:
        if request.param == "redis":
            yield Stack("redis", server, broker_url(server))
            return
        with private_vhost(request.module.__name__.rsplit(".", 1)[-1]) as url:
            yield Stack("rabbitmq", server, url)


def worker_env(broker: RedisServer | Stack, state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDRUN_", "CELERY_"))}
    if isinstance(broker, Stack):
        env.update({"SANDRUN_BROKER_URL": broker.url, "SANDRUN_RESULT_BACKEND": broker.backend})
    else:
        env["SANDRUN_BROKER_URL"] = broker_url(broker)
    env.update({"SANDRUN_STATE_DIR": str(state),
                "PYTHONPATH": str(ROOT),
                # Integration jobs leave marks in the tests' own (private) directories, reach
                # local servers and one kills its pool process, which the sandbox's defaults
                # forbid: run them as the worker's user, with no view and the network. The
                # sandbox's guarantees are tested with its defaults in tests/worker,
                # tests/reliability/test_sandbox_security.py and test_redteam.py.
                "SANDRUN_JOB_USER": "root", "SANDRUN_JOB_UIDS": "",
                "SANDRUN_FILESYSTEM_ISOLATION": "off", "SANDRUN_NETWORK_ISOLATION": "off"})
    env.update(extra)
    return env


def broker_url(broker: RedisServer) -> str:
    return f"redis+socket://{broker.socket}"


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def processes(broker: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Other ``sandrun`` processes of one test (``processes("beat")``), on the module's
    broker: stopped at the end of the test, whatever happened."""
    started: list[Worker] = []

    def start(*args: str, **env: str) -> Worker:
        argv = [sys.executable, "-m", "worker.cli", "--log-level", "info", *args]
        started.append(Worker(argv, worker_env(broker, tmp_path, **env),
                              tmp_path / f"proc-{len(started)}.log"))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def start_worker(broker: RedisServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[WorkerFactory]:
    """Start workers against the module's broker; all are stopped at module end."""
    yield from _workers(broker, tmp_path_factory)


@pytest.fixture(scope="module")
def start_stack_worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[WorkerFactory]:
    """Start workers on the module's ``stack``; all are stopped at module end."""
    yield from _workers(stack, tmp_path_factory)


def _workers(broker: RedisServer | Stack, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[WorkerFactory]:
    started: list[Worker] = []
    state = tmp_path_factory.mktemp("state")

    def start(*, concurrency: int = 2, name: str = "w1", queues: str = "sandrun",
              include: str = "tests.support.tasks", cli: bool = False, ready: bool = True,
              command: list[str] | None = None, **env: str) -> Worker:
        """A worker (``command``: another ``sandrun`` command, e.g. ``["beat"]``)."""
        if command:
            argv = [sys.executable, "-m", "worker.cli", "--log-level", "info", *command]
        elif cli:
            argv = [sys.executable, "-m", "worker.cli", "worker", "-c", str(concurrency),
                    "-n", f"{name}@%h", "-Q", queues]
        else:
            argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-c",
                    str(concurrency), "-n", f"{name}@%h", "-Q", queues, "--include", include,
                    "--without-mingle", "--without-gossip", "-l", "info"]
        log = state / f"{name}-{len(started)}.log"
        worker = Worker(argv, worker_env(broker, state, **env), log)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
