"""Shared fixtures. Tests that need Redis get a private ``redis-server`` on a unix
socket in a temporary directory, never the machine's shared one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog

from worker.sandbox.launcher import dying_with_parent

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
