"""Side effects that reliability tests can count: sandboxed jobs report to a ledger.

A sandboxed job runs as another user, under Landlock, so it cannot write the
test's files or signal the worker; it can still open a TCP connection to
127.0.0.1 (jobs are not network-isolated unless configured). :func:`job_code`
is a job that reports ``start`` when its body begins and ``end`` once its side
effect is done, then prints its run token. Each report is one line that the
ledger (a server in the test process) acknowledges, so the job goes on only once
the report is recorded. A job may also ask the ledger to SIGKILL the pool
process running it (``kill``): that is how a test makes a poison job, since the
sandbox forbids a job to do it itself.

Times are the job's ``time.time()``, comparable with the result watcher's
(``tests.support.results``) on one host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REPORT = '''
import os, socket, time, uuid
TOKEN = uuid.uuid4().hex
JOB = os.environ["SANDRUN_JOB_ID"]
ADDRESS = {host!r}

def connect():
    if ADDRESS.startswith("/"):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(30)
        conn.connect(ADDRESS)
        return conn
    return socket.create_connection((ADDRESS, {port}), timeout=30)

def report(phase):
    deadline = time.monotonic() + 60
    while True:
        try:
            with connect() as conn:
                line = f"{{phase}} {{JOB}} {{TOKEN}} {{os.getppid()}} {{time.time():.6f}}\\n"
                conn.sendall(line.encode())
                if conn.recv(1) == b"k":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the ledger did not answer")
        time.sleep(0.05)

report("start")
'''


def job_code(port: int, *, linger: float = 0.0, poison: bool = False,
             host: str = "127.0.0.1") -> str:
    """Python source of a ledger job: report start, linger, report end, print the token.

    ``poison``: after ``start``, ask the ledger to SIGKILL this job's pool process, on
    every delivery, and wait to be killed with it. ``host``: the ledger's address (a
    test host's, ``tests.support.netns``), or the path of its unix socket."""
    body = REPORT.format(port=port, host=host)
    if poison:
        body += 'report("kill")\ntime.sleep(120)\n'
    if linger:
        body += f"time.sleep({linger})\n"
    return body + 'report("end")\nprint(TOKEN)\n'


@dataclass
class Run:
    """One execution of a job's body (one token)."""

    job_id: str
    token: str
    launcher: int
    started: float
    pool: int | None = None  # the pool process running it, and that process's parent
    worker: int | None = None
    ended: float | None = None


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Ledger:
    """The server side: every run of every job, and the pool processes it killed.

    ``owns(pid)`` must say whether a pool process belongs to a worker the test
    started; the ledger kills nothing else."""

    owns: Callable[[int], bool]
    runs: dict[str, Run] = field(default_factory=dict)
    killed: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, line: str) -> None:
        phase, job_id, token, launcher, at = line.split()
        with self.changed:
            if phase == "start":
                pool = parent_of(int(launcher))
                self.runs[token] = Run(job_id, token, int(launcher), float(at), pool,
                                       parent_of(pool) if pool else None)
            elif phase == "end":
                self.runs[token].ended = float(at)
            elif phase == "kill":
                self.kill_pool_of(int(launcher))
            self.changed.notify_all()

    def kill_pool_of(self, launcher: int) -> int | None:
        """SIGKILL the pool process whose job launcher is ``launcher``; its pid, or None."""
        pool = parent_of(launcher)
        if pool is None or not self.owns(pool):
            self.refused.append(f"launcher {launcher}: pool {pool} is not ours")
            return None
        os.kill(pool, signal.SIGKILL)
        self.killed.append(pool)
        return pool

    def of(self, job_id: str) -> list[Run]:
        with self.changed:
            return sorted((r for r in self.runs.values() if r.job_id == job_id),
                          key=lambda r: r.started)

    def running(self) -> list[Run]:
        """Runs that started and have not reported their end."""
        with self.changed:
            return [r for r in self.runs.values() if r.ended is None]

    def wait_for(self, what: str, predicate: Callable[[], object], timeout: float = 90
                 ) -> object:
        """Block until ``predicate()`` is truthy (re-checked on every report); its value."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (value := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self.changed.wait(min(left, 0.5))
            return value


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline().decode()
        if line.strip():
            self.server.ledger.record(line)  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):  # a killed job does not read its answer
                self.wfile.write(b"k")


class LedgerServer(socketserver.ThreadingTCPServer):
    """The ledger served on 127.0.0.1 (a free port) from a thread, until ``close``."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, owns: Callable[[int], bool],
                 listener: socket.socket | None = None) -> None:
        """``listener``: a listening socket to serve on (one made inside a test host's
        namespace), in place of a free port on 127.0.0.1."""
        if listener is None:
            super().__init__(("127.0.0.1", 0), _Handler)
        else:
            super().__init__(listener.getsockname(), _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = listener
        self.ledger = Ledger(owns)
        self.host, self.port = str(self.server_address[0]), int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                         name="ledger", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)


class UnixLedgerServer(socketserver.ThreadingUnixStreamServer):
    """The ledger served on a unix socket at ``path`` (``host`` for :func:`job_code`):
    reachable from every network namespace, so a job reports even while its host's
    link is cut."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, owns: Callable[[int], bool], path: str) -> None:
        super().__init__(path, _Handler)
        self.ledger = Ledger(owns)
        self.host, self.port = path, 0
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                         name="ledger", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(10)
