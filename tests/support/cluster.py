"""A private Sandrun deployment for one reliability test, always torn down.

:class:`Broker` is a ``redis-server`` on a unix socket in the test's directory,
optionally with an append-only file (``appendfsync always``) so it can be killed
with SIGKILL and restarted on the same socket with its data. :class:`Cluster`
adds real ``celery worker`` processes (prefork), the side-effect ledger, the
result watcher and a producer client; :meth:`Cluster.close` stops all of them,
whatever happened, ending only processes it started (by pid or process group).

``kind="rabbitmq"`` carries the jobs over RabbitMQ instead, with the Redis kept as
result backend and store: a private virtual host of the shared node, or with
``own_node=True`` a ``rabbitmq-server`` of the test's own that ``transport`` can
SIGKILL and restart (``tests.support.rabbit``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

from tests.integration.conftest import Worker, worker_env
from tests.support.ledger import LedgerServer, parent_of
from tests.support.rabbit import RabbitNode, own_rabbit, private_vhost
from tests.support.results import ResultWatch
from worker.client.client import JobExecution, Sandrun
from worker.sandbox.launcher import dying_with_parent

ROOT = Path(__file__).resolve().parents[2]


def final_results(client: Sandrun, runs: Iterable[JobExecution], timeout: float
                  ) -> dict[str, Any]:
    """Wait (one deadline for all) for every job's final result; the stored JSON form,
    or None for a job that had none in time."""
    deadline = time.monotonic() + timeout
    out: dict[str, Any] = {}
    for run in runs:
        with contextlib.suppress(Exception):
            run.wait(timeout=max(0.5, deadline - time.monotonic()))
        meta: Mapping[str, Any] = client.app.backend.get_task_meta(run.id)
        out[run.id] = meta.get("result") if meta.get("status") == "SUCCESS" else None
    return out


class Broker:
    """A private redis-server; ``kill`` (SIGKILL) and ``start`` again keep socket and data."""

    def __init__(self, directory: Path, *, aof: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not on PATH (Debian: apt-get install "
                                 "redis-server)")
        self.directory = directory
        self.socket = directory / "redis.sock"
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if aof
                       else ["--appendonly", "no"])
        self.argv = [binary, "--port", "0", "--unixsocket", str(self.socket),
                     "--unixsocketperm", "700", "--save", "", *persistence,
                     "--dir", str(directory)]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """The broker URL workers and producers use."""
        return f"redis+socket://{self.socket}"

    def client(self, **options: Any) -> redis.Redis[bytes]:
        return redis.Redis(unix_socket_path=str(self.socket), **options)

    def start(self, timeout: float = 30) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(dying_with_parent(self.argv), stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as probe:
                    if probe.ping():
                        return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("the private redis-server did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final write) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


class Cluster:
    """One test's broker, workers, ledger, result watcher and client.

    ``broker`` is always the private Redis (results and stores, and the jobs' broker
    when ``kind`` is redis); ``transport`` is what carries the jobs, with ``kill`` and
    ``start`` (the Redis itself, or the own RabbitMQ node)."""

    def __init__(self, directory: Path, *, aof: bool = False, kind: str = "redis",
                 own_node: bool = False) -> None:
        self.directory = directory
        self.kind = kind
        self.workers: list[Worker] = []
        self._resources = contextlib.ExitStack()
        self.broker = Broker(directory, aof=aof)
        self._resources.callback(self.broker.stop)
        self.transport: Broker | RabbitNode = self.broker
        self.broker_url = self.broker.url
        if kind == "rabbitmq" and own_node:
            self.transport = self._resources.enter_context(own_rabbit(directory / "rabbit"))
            self.broker_url = self.transport.url
        elif kind == "rabbitmq":
            self.broker_url = self._resources.enter_context(private_vhost("reliability"))
        self.ledger_server = LedgerServer(self.owns)
        self.ledger = self.ledger_server.ledger
        self.watch = ResultWatch(self.broker.client)
        self.client = Sandrun.create(broker_url=self.broker_url, result_backend=self.broker.url,
                                     plugins=[])

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is a pool process of a worker this cluster started."""
        return parent_of(pid) in {w.proc.pid for w in self.workers if w.proc.poll() is None}

    def env(self, **extra: str) -> dict[str, str]:
        env = worker_env(self.broker, self.directory / "state")  # type: ignore[arg-type]
        env.update({"SANDRUN_BROKER_URL": self.broker_url,
                    "SANDRUN_RESULT_BACKEND": self.broker.url, **extra})
        return env

    def trail(self, job_ids: list[str], lines: int = 12) -> str:
        """The last log lines of every worker that name each of ``job_ids``: what a
        failed reliability check prints, so that a lost job can be followed."""
        parts = []
        for job_id in job_ids:
            for worker in self.workers:
                named = [line for line in worker.output().splitlines() if job_id in line]
                if named:
                    parts.append(f"--- {job_id} in {worker.log.name}:")
                    parts += [line[:400] for line in named[-lines:]]
            if not any(job_id in part for part in parts):
                parts.append(f"--- {job_id}: no worker logged it")
        return "\n".join(parts)

    def start_worker(self, name: str, *, concurrency: int = 2, **env: str) -> Worker:
        """A ``celery worker`` (prefork) named ``name@%h`` on the default queue."""
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", str(concurrency),
                "-n", f"{name}@%h", "-Q", "sandrun", "--without-mingle", "--without-gossip",
                "-l", "info"]
        worker = Worker(argv, self.env(**env), self.directory / f"{name}-{len(self.workers)}.log")
        self.workers.append(worker)
        worker.wait_ready(timeout=90)
        return worker

    def kill_worker(self, worker: Worker) -> None:
        """SIGKILL a worker's main process (its pool processes die with it)."""
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()

    def finals(self, runs: Iterable[JobExecution], timeout: float) -> dict[str, Any]:
        """Every job's final result (:func:`final_results`)."""
        return final_results(self.client, runs, timeout)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.stop()
        for step in (self.client.close, self.watch.close, self.ledger_server.close,
                     self._resources.close):
            with contextlib.suppress(Exception):
                step()
