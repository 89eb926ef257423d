"""RabbitMQ for tests: a private virtual host on the shared node, or a node of one's own.

The machine's shared RabbitMQ (127.0.0.1:5672, guest/guest) serves other programs
too. Tests use it only through :func:`private_vhost`, a virtual host created for
one test module and deleted after it (even when the test fails), so nothing a test
declares or leaves is seen by anybody else. A test that kills or restarts the
broker starts :class:`RabbitNode` instead: its own ``rabbitmq-server`` with its own
node name, ports, epmd, Erlang cookie and data directory under the test's
temporary directory; it never talks to the shared node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest

from worker.sandbox.launcher import dying_with_parent

SHARED_HOST, SHARED_PORT = "127.0.0.1", 5672
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _ctl() -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is not on PATH; install rabbitmq-server (Debian: apt-get "
                    "install rabbitmq-server). .ci/run installs it on a fresh machine.")
    return ctl


def amqp_url(host: str, port: int, vhost: str) -> str:
    """The broker URL of ``vhost`` (percent-encoded) on ``host:port`` as guest."""
    return f"amqp://guest:guest@{host}:{port}/{urllib.parse.quote(vhost, safe='')}"


@contextlib.contextmanager
def private_vhost(tag: str) -> Iterator[str]:
    """A fresh virtual host on the shared node for the block; yields its amqp:// URL and
    deletes the vhost (and so every queue and exchange in it) afterwards, even on failure."""
    name = f"sandrun-test-{tag}-{uuid.uuid4().hex[:8]}"
    ctl = _ctl()
    subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run([ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True, timeout=60)
        yield amqp_url(SHARED_HOST, SHARED_PORT, name)
    finally:
        subprocess.run([ctl, "delete_vhost", name], check=False, capture_output=True,
                       timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether an AMQP connection to ``host:port`` opens (guest, vhost /)."""
    try:
        conn = amqp.Connection(f"{host}:{port}", userid="guest", password="guest",
                               connect_timeout=timeout)
        conn.connect()
        conn.close()
        return True
    except (OSError, amqp.exceptions.AMQPError):
        return False


class RabbitNode:
    """A ``rabbitmq-server`` node of the test's own under ``directory``.

    ``kill()`` SIGKILLs the whole node (its process group) as a crash would;
    ``start()`` brings it back on the same data directory and port; ``stop()`` ends it
    and its epmd for good."""

    def __init__(self, directory: Path, *, plugins: tuple[str, ...] = (),
                 config: str = "") -> None:
        """``plugins`` to enable (e.g. ``rabbitmq_prometheus``) and extra ``config`` lines
        for its rabbitmq.conf."""
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            pytest.fail("rabbitmq-server is not installed; apt-get install rabbitmq-server "
                        "(.ci/run installs it on a fresh machine)")
        self.directory = directory
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.url = amqp_url("127.0.0.1", self.port, "/")
        home = directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        # consumer_timeout above any test job; a quiet log; no disk alarm on a full tmp.
        (directory / "rabbitmq.conf").write_text(
            "consumer_timeout = 3600000\nlog.console = false\nlog.file.level = warning\n"
            "disk_free_limit.absolute = 1MB\n" + config)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home), "RABBITMQ_NODENAME": f"sandrun-{uuid.uuid4().hex[:8]}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(directory / "rabbit.pid")}
        self.process: subprocess.Popen[bytes] | None = None
        # An epmd of its own, started here (not daemonised) so stop() ends it by pid.
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        argv = [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"]
        self.epmd = subprocess.Popen(dying_with_parent(argv), env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.start()

    def start(self, timeout: float = 60) -> None:
        """Start the node (again) and wait until it accepts AMQP connections."""
        log = open(self.directory / "server.out", "ab")  # noqa: SIM115 (the child keeps it)
        # dying with the test process too, should it be killed before its cleanup runs
        self.process = subprocess.Popen(dying_with_parent([str(RABBIT_BIN / "rabbitmq-server")]),
                                        env=self.env,
                                        cwd=self.directory, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not broker_answers("127.0.0.1", self.port, timeout=1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.directory / "server.out").read_text(errors="replace")[-3000:]
                self.stop()
                pytest.fail(f"own rabbitmq-server did not start:\n{output}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the node and everything it started (a crash, no clean shutdown)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """End the node and its own epmd, whatever state they are in."""
        self.kill()
        if self.epmd.poll() is None:
            self.epmd.kill()
        self.epmd.wait()


@contextlib.contextmanager
def own_rabbit(directory: Path, **options: Any) -> Iterator[RabbitNode]:
    """A :class:`RabbitNode` for the block, stopped even on failure."""
    node = RabbitNode(directory, **options)
    try:
        yield node
    finally:
        node.stop()
