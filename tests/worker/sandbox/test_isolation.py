"""Which confinement a job gets: the plan from settings and host, the job user, the probe."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from worker.sandbox import landlock
from worker.sandbox.confine import SHM_BYTES, IsolationError
from worker.sandbox.isolation import (
    HostSupport,
    IsolationUnavailable,
    hand_over,
    job_user_ids,
    plan_confinement,
    probe,
)

USER = job_user_ids("nobody")
SUPPORT = probe(USER)
EVERYTHING = HostSupport(user_namespaces=True, network=True, landlock_abi=6,
                         process_limit="per-job")
NOTHING = HostSupport(user_namespaces=False, network=False, landlock_abi=0,
                      process_limit="shared", notes=("no network namespaces (EPERM)",))


def test_the_plan_names_what_applies() -> None:
    plan, isolation = plan_confinement("/jobs/1", max_processes=64, filesystem="auto",
                                       network=True, job_user="nobody", support=EVERYTHING)
    assert isolation == "process+pids+filesystem+network"
    assert (plan.max_processes, plan.user, plan.user_namespace, plan.network) == (
        64, USER, True, True)
    assert plan.writable == ("/jobs/1",) and "/dev/null" in plan.devices
    assert plan.shm_bytes == (SHM_BYTES if os.path.isdir("/dev/shm") else 0)
    plan, isolation = plan_confinement("/jobs/1", max_processes=64, filesystem="off",
                                       network=False, job_user="nobody", support=EVERYTHING)
    assert isolation == "process+pids" and plan.writable == () and plan.shm_bytes == 0
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


