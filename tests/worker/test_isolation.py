"""Confinement of a job process: what the host offers, the plan, and what ``enter`` does."""

from __future__ import annotations

import encodings.idna  # noqa: F401 (a job user may not read the stdlib of this venv)
import errno
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from worker import landlock
from worker.isolation import (
    CLONE_NEWUSER,
    Confinement,
    HostSupport,
    IsolationError,
    IsolationUnavailable,
    enter,
    hand_over,
    job_user_ids,
    plan_confinement,
    probe,
    tasks_of,
    unshare,
)

USER = job_user_ids("nobody")
SUPPORT = probe(USER)
EVERYTHING = HostSupport(user_namespaces=True, network=True, landlock_abi=6,
                         process_limit="per-job")
NOTHING = HostSupport(user_namespaces=False, network=False, landlock_abi=0,
                      process_limit="shared", notes=("no network namespaces (EPERM)",))
needs_userns = pytest.mark.skipif(not SUPPORT.user_namespaces,
                                  reason=f"no user namespaces here: {SUPPORT.notes}")


def in_child(confinement: Confinement, check: Callable[[], str]) -> str:
    """``check()`` run in a forked child after ``enter(confinement)``: its result, or
    ``error: ...`` if entering or checking raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            enter(confinement)
            result = check()
        except BaseException as exc:
            result = f"error: {type(exc).__name__}: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        out = fh.read().decode()
    os.waitpid(pid, 0)
    return out


def test_the_plan_names_what_applies() -> None:
    plan, isolation = plan_confinement("/jobs/1", max_processes=64, filesystem="auto",
                                       network=True, job_user="nobody", support=EVERYTHING)
    assert isolation == "process+pids+filesystem+network"
    assert (plan.max_processes, plan.user, plan.user_namespace, plan.network) == (
        64, USER, True, True)
    assert plan.writable == ("/jobs/1",) and "/dev/null" in plan.devices
    plan, isolation = plan_confinement("/jobs/1", max_processes=64, filesystem="off",
                                       network=False, job_user="nobody", support=EVERYTHING)
    assert isolation == "process+pids" and plan.writable == ()
    _, isolation = plan_confinement("/jobs/1", max_processes=64, filesystem="auto",
                                    network=False, job_user="nobody", support=NOTHING)
    assert isolation == "process"


@pytest.mark.parametrize(("filesystem", "network", "reason"), [
    ("required", False, "SANDRUN_FILESYSTEM_ISOLATION is 'required'"),
    ("auto", True, "no network namespaces (EPERM)"),
])
def test_the_plan_refuses_what_the_host_lacks(filesystem: str, network: bool,
                                              reason: str) -> None:
    with pytest.raises(IsolationUnavailable, match=re.escape(reason)):
        plan_confinement("/jobs/1", max_processes=64, filesystem=filesystem, network=network,
                         job_user="nobody", support=NOTHING)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker changes the job's user")
def test_root_workers_run_jobs_as_the_job_user() -> None:
    assert job_user_ids("nobody") == job_user_ids("65534") == (65534, 65534)
    assert job_user_ids("root") is None
    with pytest.raises(IsolationError, match="set SANDRUN_JOB_USER to an unprivileged user"):
        job_user_ids("no-such-user-here")


def test_probe_agrees_with_the_kernel() -> None:
    assert SUPPORT.landlock_abi == landlock.abi()
    missing = [not SUPPORT.user_namespaces, not SUPPORT.network, not SUPPORT.landlock_abi,
               SUPPORT.process_limit == "none"]
    assert bool(SUPPORT.notes) == any(missing)


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


def test_hand_over_gives_the_job_user_its_directory() -> None:
    with tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o711)
        Path(parent, "job", "sub").mkdir(parents=True)
        Path(parent, "job", "sub", "f").write_text("x")
        hand_over(Path(parent, "job"), USER)
        owner = USER or (os.getuid(), os.getgid())
        for path in ("job", "job/sub", "job/sub/f"):
            info = os.stat(Path(parent, path))
            assert (info.st_uid, info.st_gid) == owner


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
