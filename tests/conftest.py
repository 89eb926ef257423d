"""Shared fixtures. Tests that need Redis get a private ``redis-server`` on a unix
socket in a temporary directory, never the machine's shared one.

The session also holds the suite to leaving the checkout as it found it: ``git
status`` is read at the start and at the end, and a file a test wrote, changed or
removed in the work tree fails the run (paths in ``.gitignore`` do not count).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from tests.support.scenarios import REPORT_KEY, from_worker_output, to_worker_output
from worker.sandbox.launcher import dying_with_parent

ROOT = Path(__file__).resolve().parents[1]
_WORK_TREE = pytest.StashKey[dict[str, str] | None]()
_CHANGED = pytest.StashKey[list[str]]()

# The test process never starts an embedded broker: importing worker.node.app with no
# broker configured would. Tests that exercise the embedded default run subprocesses.
os.environ["SANDRUN_STATE_DIR"] = tempfile.mkdtemp(prefix="sandrun-test-state-")
os.environ.setdefault("SANDRUN_BROKER_URL", "memory://")
os.environ.setdefault("SANDRUN_RESULT_BACKEND", "cache+memory://")


class RedisServer:
    """A private redis-server process; ``url`` is a ``unix://`` URL."""

    def __init__(self, directory: Path, *, die_with_parent: bool = True) -> None:
        """``die_with_parent=False`` when started from a short-lived thread: the kernel's
        parent-death signal follows the starting thread, not the process."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH; install it (Debian: apt-get install "
                        "redis-server). .ci/run installs it on a fresh machine.")
        self.socket = directory / "redis.sock"
        argv = [binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm",
                "700", "--save", "", "--appendonly", "no", "--dir", str(directory)]
        self.process = subprocess.Popen(dying_with_parent(argv) if die_with_parent else argv,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"unix://{self.socket}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("private redis-server did not start")
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[RedisServer]:
    """A private redis-server for the duration of the block, stopped even on failure."""
    server = RedisServer(directory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog for the process; undo it so tests stay independent."""
    yield
    structlog.reset_defaults()


def _git(*args: str) -> subprocess.CompletedProcess[bytes] | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        return subprocess.run([git, *args], cwd=ROOT, capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _digest(path: Path) -> str:
    """What a status line does not show: the content of a file that is already dirty."""
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return "-"  # deleted, or a directory (a submodule)


def work_tree_state() -> dict[str, str] | None:
    """Every path ``git status`` reports under the suite's checkout (untracked files one
    by one), with its status and content digest; None when this is not a git checkout."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0:
        return None
    toplevel = Path(os.fsdecode(top.stdout.strip()))
    status = _git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".")
    if status is None or status.returncode != 0:
        return None
    entries: dict[str, str] = {}
    fields = iter(status.stdout.split(b"\0"))
    for field in fields:
        if not field:
            continue
        code, path = field[:2].decode(), os.fsdecode(field[3:])
        if code[0] in "RC":
            next(fields, None)  # a rename or copy names its source in the next field
        entries[path] = f"{code} {_digest(toplevel / path)}"
    return entries


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_WORK_TREE] = work_tree_state()


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash.get(_WORK_TREE, None)
    if state is None:
        return "work tree check: off (not a git checkout)"
    return f"work tree check: on ({len(state)} paths already changed or untracked)"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if the suite wrote, changed or removed anything in the checkout; an
    xdist worker also hands the reliability rows it recorded to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        to_worker_output(session.config, output)
    before = session.config.stash.get(_WORK_TREE, None)
    after = work_tree_state() if before is not None else None
    if before is None or after is None:
        return
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        session.config.stash[_CHANGED] = [
            f"  {after[p].split()[0]} {p}" if p in after else f"  {p} (was {before[p].split()[0]})"
            for p in changed]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller gathers the reliability rows of a finished xdist worker."""
    from_worker_output(node.config, getattr(node, "workeroutput", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is not None and report.rows:
        terminalreporter.section("reliability scenarios")
        for text in report.table():
            terminalreporter.write_line(text)
    changed = config.stash.get(_CHANGED, [])
    if changed:
        terminalreporter.write_sep("=", "work tree not clean", red=True, bold=True)
        terminalreporter.write_line(
            "the run changed the checkout (git status): tests write under tmp_path or the "
            "state directory, never into the work tree:")
        for line in changed:
            terminalreporter.write_line(line)
