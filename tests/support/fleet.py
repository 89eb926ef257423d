"""A Sandrun fleet across test hosts (``tests.support.netns``), always torn down.

:class:`Fleet` builds the hosts, runs a private ``redis-server`` inside the broker host
bound to its address (``10.233.71.1:6379``; also on a unix socket in the test's
directory, which is how the test process, outside every host, submits and watches),
serves the side-effect ledger on the broker host's address (or a unix socket), and starts ``celery
worker`` processes inside worker hosts against ``redis://10.233.71.1:6379/0``: their
broker, results and stores all travel over their host's link. :meth:`Fleet.close`
stops every worker (SIGTERM, then SIGKILL of its process group), the ledger, the
watcher, the client and the Redis, then deletes the hosts, whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.integration.conftest import Worker, worker_env
from tests.support.cluster import Broker, final_results
from tests.support.ledger import LedgerServer, UnixLedgerServer, parent_of
from tests.support.netns import Host, HostNetwork, socket_in
from tests.support.results import ResultWatch
from worker.client.client import JobExecution, Sandrun

REDIS_PORT = 6379
LEDGER_PORT = 7000


class HostBroker(Broker):
    """A redis-server inside the broker host, on its address and on a unix socket."""

    def __init__(self, directory: Path, host: Host) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not on PATH (Debian: apt-get install "
                                 "redis-server)")
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.argv = host.command([
            binary, "--bind", host.address, "--port", str(REDIS_PORT), "--protected-mode",
            "no", "--unixsocket", str(self.socket), "--unixsocketperm", "700", "--save", "",
            "--appendonly", "no", "--dir", str(directory)])
        self.process = None
        self.start()


class Fleet:
    """Test hosts with a broker, a ledger, a result watcher, a client; workers on demand."""

    def __init__(self, directory: Path, hosts: int, *, ledger: str = "network") -> None:
        """``ledger``: ``network`` serves it on the broker host (a job's reports cross its
        host's link), ``unix`` on a unix socket (they do not: a partitioned host's jobs
        can still finish their side effect)."""
        self.directory = directory
        self.workers: dict[str, Worker] = {}
        self._resources = contextlib.ExitStack()
        try:
            self._start(directory, hosts, ledger)
        except BaseException:
            self._resources.close()  # what was started, the hosts included, is undone
            raise

    def _start(self, directory: Path, hosts: int, ledger: str) -> None:
        self.net = HostNetwork(hosts)
        self._resources.callback(self.net.close)
        self.broker = HostBroker(directory, self.net.broker)
        self._resources.callback(self.broker.stop)
        self.url = f"redis://{self.net.broker.address}:{REDIS_PORT}/0"
        self.ledger_server: LedgerServer | UnixLedgerServer = (
            LedgerServer(self.owns, socket_in(self.net.broker.name,
                                              (self.net.broker.address, LEDGER_PORT)))
            if ledger == "network" else UnixLedgerServer(self.owns, str(directory / "ledger")))
        self._resources.callback(self.ledger_server.close)
        self.ledger = self.ledger_server.ledger
        self.watch = ResultWatch(self.broker.client)
        self._resources.callback(self.watch.close)
        self.client = Sandrun.create(broker_url=self.broker.url,
                                     result_backend=self.broker.url, plugins=[])
        self._resources.callback(self.client.close)

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is a pool process of a worker this fleet started."""
        return parent_of(pid) in {w.proc.pid for w in self.workers.values()
                                  if w.proc.poll() is None}

    @staticmethod
    def node_name(host: Host) -> str:
        """The Celery node name of ``host``'s worker (a namespace keeps the hostname)."""
        return f"{host.name}@{socket.gethostname()}"

    def start_worker(self, host: Host, *, concurrency: int = 2, **env: str) -> Worker:
        """A ``celery worker`` (prefork) inside ``host``, named after it."""
        argv = host.command([
            sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", str(concurrency),
            "-n", self.node_name(host), "-Q", "sandrun", "--without-mingle", "--without-gossip",
            "-l", "info"])
        full = worker_env(self.broker, self.directory / "state")  # type: ignore[arg-type]
        full.update({"SANDRUN_BROKER_URL": self.url, "SANDRUN_RESULT_BACKEND": self.url,
                     **env})
        worker = Worker(argv, full, self.directory / f"{host.name}.log")
        self.workers[host.name] = worker
        worker.wait_ready(timeout=90)
        return worker

    def finals(self, runs: Iterable[JobExecution], timeout: float) -> dict[str, Any]:
        """Every job's final result (:func:`~tests.support.cluster.final_results`)."""
        return final_results(self.client, runs, timeout)

    def close(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.stop()
        self._resources.close()
