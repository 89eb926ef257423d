"""The embedded default broker, used when no broker is configured.

Quick start on a machine with nothing running: if ``redis-server`` is on PATH,
start a private one on a unix socket under the state directory (shared by every
Sandrun process of this user, started once under a file lock, kept with an
append-only file) and use it for both broker and results. Otherwise fall back
to kombu's ``filesystem://`` transport with ``file://`` results and say loudly
what that mode cannot do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from worker.errors import ConfigurationError

FILESYSTEM_WARNING = (
    "sandrun: no broker configured and redis-server is not installed, so jobs go through "
    "kombu's filesystem:// transport under {state}. This mode works on ONE host only; a "
    "worker killed with SIGKILL loses its in-flight jobs; there are no priorities, and "
    "cancel/inspect cannot reach workers. Set SANDRUN_BROKER_URL=redis://... for real use.")


def _socket(state: Path) -> Path:
    return state / "redis.sock"


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state / "embedded.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        client = redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def embedded_running(state: Path) -> bool:
    """Whether the embedded redis-server of ``state`` answers."""
    return _alive(_socket(state))


def start_redis(state: Path, binary: str) -> Path:
    """Start (or reuse) the private redis-server of ``state``; return its socket."""
    sock = _socket(state)
    if len(str(sock)) > 100:
        raise ConfigurationError(f"state directory {state} is too long for a unix socket "
                                 "path; set SANDRUN_STATE_DIR to a shorter directory")
    with _locked(state):
        if _alive(sock):
            return sock
        sock.unlink(missing_ok=True)
        subprocess.run(
            [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
             "--daemonize", "yes", "--pidfile", str(state / "redis.pid"), "--dir", str(state),
             "--appendonly", "yes", "--save", "", "--logfile", str(state / "redis.log")],
            check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _alive(sock):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"the embedded redis-server did not start; see "
                                         f"{state / 'redis.log'}")
            time.sleep(0.02)
    return sock


def stop_redis(state: Path) -> bool:
    """Stop the embedded redis-server of ``state``; False if none was running."""
    with _locked(state):
        pidfile = state / "redis.pid"
        if not pidfile.exists():
            return False
        pid = int(pidfile.read_text().strip() or 0)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        pidfile.unlink(missing_ok=True)
        _socket(state).unlink(missing_ok=True)
        return True


def embedded_environment(state: Path, mode: str = "auto") -> dict[str, str]:
    """Environment variables that point Celery and Sandrun at the embedded broker."""
    binary = shutil.which("redis-server")
    if mode == "redis" or (mode == "auto" and binary):
        if binary is None:
            raise ConfigurationError("SANDRUN_EMBEDDED=redis, but redis-server is not on PATH")
        url = f"redis+socket://{start_redis(state, binary)}"
        return {"SANDRUN_BROKER_URL": url, "SANDRUN_RESULT_BACKEND": url}
    queue = state / "queue"  # celeryconfig puts kombu's routing tables in state/control
    for folder in (queue, state / "control", state / "results"):
        folder.mkdir(parents=True, exist_ok=True)
    print(FILESYSTEM_WARNING.format(state=state), file=sys.stderr)
    return {"SANDRUN_BROKER_URL": "filesystem://", "SANDRUN_BROKER_FOLDER": str(queue),
            "SANDRUN_RESULT_BACKEND": f"file://{state / 'results'}"}


def ensure_broker_configured() -> None:
    """If ``SANDRUN_BROKER_URL`` is unset, start the embedded broker and export its URLs,
    so this process and every worker it starts use the same one."""
    if os.environ.get("SANDRUN_BROKER_URL"):
        return
    from worker.settings import load_settings

    settings = load_settings()
    os.environ.update(embedded_environment(settings.state_dir, settings.embedded))


