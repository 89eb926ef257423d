"""Which confinement a job gets: the plan from settings and host, the job user, the probe."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from worker.sandbox import landlock
from worker.sandbox.confine import IsolationError
from worker.sandbox.isolation import (
    hand_over,
    job_user_ids,
    probe,
)

USER = job_user_ids("nobody")
SUPPORT = probe(USER)
@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker changes the job's user")
def test_root_workers_run_jobs_as_the_job_user() -> None:
    assert job_user_ids("nobody") == job_user_ids("65534") == (65534, 65534)
    assert job_user_ids("root") is None
    with pytest.raises(IsolationError, match="set SANDRUN_JOB_USER to an unprivileged user"):
        job_user_ids("no-such-user-here")


def test_probe_agrees_with_the_kernel() -> None:
    assert SUPPORT.landlock_abi == landlock.abi()
    missing = [not SUPPORT.user_namespaces, not SUPPORT.network, not SUPPORT.landlock_abi,
               SUPPORT.process_limit == "none", not SUPPORT.view, not SUPPORT.seccomp,
               SUPPORT.cgroup is None]
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


