"""The red-team suite's deployment and its report (``tests/reliability/test_redteam.py``).

:class:`SecretBroker` is a private redis-server with a password, on loopback TCP
and on a unix socket that file permissions alone would let any user use: only the
sandbox stands between a job and it. :class:`Lab` adds one real ``celery worker``
(``-c 2``, the sandbox's default settings, job directories in a private root so
that what is left there is ours) and a real client; it runs hostile jobs and
looks at the host the way an operator would (processes, directories, free disk).
:class:`Board` collects one row per attempt and prints the table at the end of
the run (pytest's terminal summary, so it shows without ``-s`` too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import ROOT, Worker
from worker.client.client import JobExecution, Sandrun
from worker.models import Job, JobResult
from worker.sandbox.launcher import dying_with_parent

WAIT_SECONDS = 90


class SecretBroker:
    """redis-server with a random password kept in a root-only config file; reachable on
    ``127.0.0.1:port`` and on ``socket`` (mode 777, in a directory anyone may enter)."""

    def __init__(self, directory: Path) -> None:
        self.password = f"pw-{uuid.uuid4().hex}"
        self.socket = directory / "redis.sock"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = directory / "redis.conf"  # never on a command line: /proc/*/cmdline is public
        config.write_text(f"port {self.port}\nbind 127.0.0.1\nrequirepass {self.password}\n"
                          f"unixsocket {self.socket}\nunixsocketperm 777\nsave \"\"\n"
                          f"appendonly no\ndir {directory}\n")
        config.chmod(0o600)
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(dying_with_parent([binary, str(config)]),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis.from_url(self.url).ping():
                    return
            assert self.process.poll() is None and time.monotonic() < deadline, "no redis"
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def processes_with(token: str) -> list[int]:
    """Pids of the host's processes whose command line contains ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def gone(token: str, within: float = 2.0) -> list[int]:
    """Processes carrying ``token`` still there after up to ``within`` seconds (they may be
    being reaped as the result arrives); [] as soon as none is left."""
    deadline = time.monotonic() + within
    while (left := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


#: The uids jobs run as in these tests (the worker's default SANDRUN_JOB_UIDS).
JOB_UIDS = range(200000, 201000)


def owned_by_jobs(*roots: str, limit: int = 20) -> list[str]:
    """Files and directories beneath ``roots`` (links not followed) owned by a job uid: what
    a job that got out of its view would leave on the host. Measured by owner, not by free
    space, because other tests share the host's /tmp while these run. The sandbox's own
    slots (``sandrun-jobs/slot-N``, where running jobs live) are not looked into."""
    found: list[str] = []
    for root in roots:
        for top, dirs, files in os.walk(root, onerror=lambda _: None):
            if os.path.basename(top) == "sandrun-jobs":
                dirs[:] = [d for d in dirs if not d.startswith("slot-")]
            for name in dirs + files:
                path = os.path.join(top, name)
                try:
                    if os.lstat(path).st_uid in JOB_UIDS:
                        found.append(path)
                except OSError:
                    continue
                if len(found) >= limit:
                    return found
    return found


def mounts_with(token: str) -> list[str]:
    """Mount points of the host (this process's mount namespace) whose path holds ``token``."""
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if token in line.split()[4]]


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def host_addresses() -> list[str]:
    """This host's addresses other than 127.0.0.1 and link-local ones (``ip -j addr``)."""
    try:
        listing = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True,
                                            text=True, check=True, timeout=10).stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return [a["local"] for link in listing for a in link.get("addr_info", [])
            if a.get("local") not in (None, "127.0.0.1") and a.get("scope") != "link"]


def outputs_of(handle: JobExecution, result: JobResult, scratch: Path) -> dict[str, bytes]:
    """Every output of ``result`` as the client downloads it."""
    files = {}
    for index, output in enumerate(result.outputs):
        files[output.path] = handle.download(output.path, scratch / f"output-{index}").read_bytes()
    return files


@dataclass(frozen=True)
class Verdict:
    """What one attempt achieved (``result``, for the table) and whether it was contained."""

    result: str
    contained: bool


@dataclass
class Board:
    """The rows of the red-team table, printed in pytest's terminal summary."""

    rows: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def record(self, attempt: str, expected: str, verdict: Verdict) -> None:
        self.rows.append((attempt, expected, verdict.result, verdict.contained))

    def table(self) -> list[str]:
        cells = [("attempt", "expected", "result", "contained")] + [
            (a, e, r if len(r) <= 66 else r[:63] + "...", "yes" if c else "NO")
            for a, e, r, c in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(4)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in cells]
        return [lines[0], "-+-".join("-" * w for w in widths), *lines[1:]]

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.rows:
            terminalreporter.section("red team: hostile jobs through a real worker")
            for line in self.table():
                terminalreporter.write_line(line)


def private_dir(prefix: str, mode: int) -> Path:
    """A new directory under /tmp with ``mode`` (job users must pass through it)."""
    made = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    made.chmod(mode)
    return made


@dataclass
class Lab:
    """One worker and its client, plus what the suite needs to judge the host."""

    marker: str
    broker: SecretBroker
    state: Path
    workdir: Path  # the worker's TMPDIR: where its job directories go, as on /tmp
    drop: Path  # world-writable: a mark here was written from outside a job's own directory
    canary: str = field(default_factory=lambda: f"canary-{uuid.uuid4().hex}")
    workers: list[Worker] = field(default_factory=list)
    client: Sandrun | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values only the worker's environment holds."""
        return self.broker.password, self.canary

    @property
    def worker(self) -> Worker:
        return self.workers[-1]

    def start_worker(self) -> Worker:
        """A ``celery worker -c 2`` with secrets in its environment and no sandbox setting
        changed from its default (the integration tier's own overrides are left out)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDRUN_", "CELERY_"))}
        env.update(SANDRUN_BROKER_URL=self.broker.url, SANDRUN_STATE_DIR=str(self.state),
                   PYTHONPATH=str(ROOT), TMPDIR=str(self.workdir),
                   REDIS_PASSWORD=self.broker.password, AWS_SECRET_ACCESS_KEY=self.canary,
                   SANDRUN_REDTEAM_CANARY=self.canary, CELERY_REDTEAM_CANARY=self.canary)
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", "2", "-n",
                f"redteam{len(self.workers)}@%h", "-Q", "sandrun", "--without-mingle",
                "--without-gossip", "-l", "info"]
        worker = Worker(argv, env, self.state / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def revive(self) -> str:
        """Start a new worker if an earlier attempt killed this one; say so."""
        if self.worker.proc.poll() is None:
            return ""
        code = self.worker.stop()
        self.start_worker()
        return f"[worker had died (exit {code}), restarted] "

    def job(self, key: str, code: str, *args: object, **fields: Any) -> Job:
        """A job running ``code`` with ``[marker-key, *args]`` as its arguments."""
        return Job(code=code, args=[f"{self.marker}-{key}", *map(str, args)], **fields)

    def submit(self, key: str, code: str, *args: object, **fields: Any) -> JobExecution:
        assert self.client is not None
        return self.client.submit(self.job(key, code, *args, **fields))

    def run(self, key: str, code: str, *args: object, **fields: Any
            ) -> tuple[JobExecution, JobResult]:
        """Submit a job and wait for its result."""
        handle = self.submit(key, code, *args, **fields)
        return handle, handle.wait(timeout=WAIT_SECONDS)

    def serves(self) -> bool:
        """Whether the worker still runs a plain job correctly (and uninfluenced)."""
        _, result = self.run("ok", "print('still serving')", timeout=30)
        return (result.status, result.stdout, result.stderr) == ("completed",
                                                                 "still serving\n", "")

    def suite_pids(self) -> list[int]:
        """The worker, its pool processes and what they started (launchers)."""
        pids = [self.worker.proc.pid]
        for pool in children(self.worker.proc.pid):
            pids += [pool, *children(pool)]
        return pids

    def left_behind(self, *, waiting_ok: bool = False) -> list[str]:
        """What jobs left in the worker's private root: any file, and any directory named like
        a job's (``sandrun-job-*``, ``job-*``); empty directories the sandbox keeps and its
        slot locks (``.locks``, root's, empty) do not count; with ``waiting_ok`` (while
        the worker runs) neither does an empty job directory, the one a pre-started
        sandbox waits with for its job."""
        left = []
        for top, dirs, files in os.walk(self.workdir):
            if os.path.basename(top) == ".locks":
                continue
            left += [os.path.join(top, name) for name in files]
            jobs = [d for d in dirs if d.startswith(("sandrun-job-", "job-"))]
            left += [os.path.join(top, name) for name in jobs
                     if not (waiting_ok and not os.listdir(os.path.join(top, name)))]
            deep = top.count(os.sep) - str(self.workdir).count(os.sep) >= 8
            dirs[:] = [] if deep else [d for d in dirs if d not in jobs]
        return sorted(left)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for worker in self.workers:
            worker.stop()
        self.broker.stop()
