"""What ``enter`` does to a forked child: job user, namespaces, process limit, Landlock."""

from __future__ import annotations

import encodings.idna  # noqa: F401 (a job user may not read the stdlib of this venv)
import errno
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import forked
from worker.sandbox.confine import (
    CLONE_NEWUSER,
    Confinement,
    IsolationError,
    enter,
    tasks_of,
    unshare,
)
from worker.sandbox.isolation import job_user_ids, probe

USER = job_user_ids("nobody")
SUPPORT = probe(USER)
needs_userns = pytest.mark.skipif(not SUPPORT.user_namespaces,
                                  reason=f"no user namespaces here: {SUPPORT.notes}")


def in_child(confinement: Confinement, check: Callable[[], str]) -> str:
    """``check()`` run in a forked child after ``enter(confinement)``: its result, or
    ``error: ...`` if entering or checking raised."""
    def entered() -> str:
        try:
            enter(confinement)
            return check()
        except BaseException as exc:
            return f"error: {type(exc).__name__}: {exc}"

    return forked.in_child(entered)


def test_tasks_of_counts_threads_as_rlimit_nproc_does() -> None:
    assert tasks_of(os.getuid()) >= threading.active_count() >= 1
    assert tasks_of(4_000_000_000) == 0


def test_a_failed_step_says_what_failed() -> None:
    with pytest.raises(IsolationError, match=r"cannot create a test namespace: .*\(EINVAL\)"):
        unshare(CLONE_NEWUSER | 0x1, "a test namespace")  # 0x1 is no namespace flag


@needs_userns
def test_the_user_namespace_maps_only_the_job_user_and_counts_only_its_processes() -> None:
    def check() -> str:
        mapping = Path("/proc/self/uid_map").read_text().split()
        children = []
        try:
            for _ in range(10):
                pid = os.fork()
                if pid == 0:
                    signal.pause()
                    os._exit(0)
                children.append(pid)
        except BlockingIOError:
            pass
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return f"{mapping} {len(children)}"

    uid = USER[0] if USER else os.getuid()
    assert in_child(Confinement(4, USER, user_namespace=True), check) == \
        f"{[str(uid), str(uid), '1']} 3"


@pytest.mark.skipif(not SUPPORT.landlock_abi, reason=f"no Landlock here: {SUPPORT.notes}")
def test_only_the_writable_directory_and_devices_can_be_changed() -> None:
    with tempfile.TemporaryDirectory() as mine, tempfile.TemporaryDirectory() as other:
        for path in (mine, other):
            os.chmod(path, 0o777)

        def check() -> str:
            outcomes = []
            for path in (f"{mine}/f", f"{other}/f", "/dev/null"):
                try:
                    with open(path, "w") as fh:
                        fh.write("x")
                    outcomes.append("ok")
                except PermissionError:
                    outcomes.append("denied")
            return " ".join(outcomes)

        confined = Confinement(64, USER, SUPPORT.user_namespaces, writable=(mine,),
                               landlock_abi=SUPPORT.landlock_abi)
        assert in_child(confined, check) == "ok denied ok"
        assert os.listdir(other) == []




@pytest.mark.skipif(not SUPPORT.network, reason=f"no network isolation here: {SUPPORT.notes}")
def test_the_network_namespace_reaches_nothing_of_the_host() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def check() -> str:
            try:
                socket.create_connection(("127.0.0.1", port), 2).close()
                return "connected"
            except OSError as exc:
                return errno.errorcode[exc.errno or 0]

        isolated = Confinement(64, USER, SUPPORT.user_namespaces, network=True)
        assert in_child(isolated, check) in {"ENETUNREACH", "ECONNREFUSED"}
        assert in_child(Confinement(64, USER, SUPPORT.user_namespaces), check) == "connected"


@pytest.mark.skipif(not (SUPPORT.user_namespaces and os.path.isdir("/dev/shm")),
                    reason=f"no user namespaces here: {SUPPORT.notes}")
def test_a_private_dev_shm_is_small_empty_and_writable() -> None:
    marker = Path("/dev/shm", f"sandrun-test-{os.getpid()}")
    marker.write_text("the host's")
    try:
        def check() -> str:
            seen = os.listdir("/dev/shm")
            with open("/dev/shm/sem.job", "wb") as fh:
                fh.write(b"x" * 4096)
            return f"{seen} {os.statvfs('/dev/shm').f_blocks * os.statvfs('/dev/shm').f_frsize}"

        confined = Confinement(64, USER, True, shm_bytes=1 << 20)
        assert in_child(confined, check) == f"[] {1 << 20}"
        assert not Path("/dev/shm/sem.job").exists()
    finally:
        marker.unlink()
