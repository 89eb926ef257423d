"""Fencing names the job: a pool process ends itself only while it runs the job the
keeper fenced, so a fence that lands after that job ended kills nothing else."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from worker.node import fencing


@contextmanager
def pool_process(fences: Path, task_id: str | None) -> Iterator[int]:
    """A forked process that runs ``task_id`` (armed) or ran a job and now runs none."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: arm, say so, then wait to be fenced (or not)
        try:
            fencing.arm(fences, task_id or "an-earlier-job")
            if task_id is None:
                fencing.disarm()
            os.write(ready_w, b"x")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.close(ready_r)
        with suppress(ProcessLookupError):  # reaped by the test already
            os.kill(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)


def ended_by(pid: int, timeout: float = 5) -> int | None:
    """The signal that ended ``pid`` within ``timeout``, or None if it still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1
        time.sleep(0.02)
    return None


def test_the_process_running_the_fenced_job_ends_with_sigterm(tmp_path: Path) -> None:
    with pool_process(tmp_path / "fences", "job-a") as pid:
        fencing.send(tmp_path / "fences", pid, "job-a")
        assert ended_by(pid) == signal.SIGTERM


def test_a_fence_for_a_job_that_ended_spares_the_next_job(tmp_path: Path) -> None:
    with pool_process(tmp_path / "fences", "job-b") as pid:
        fencing.send(tmp_path / "fences", pid, "job-a")  # job-a ended; job-b runs now
        assert ended_by(pid, timeout=0.5) is None
        fencing.send(tmp_path / "fences", pid, "job-b")  # its own fence still works
        assert ended_by(pid) == signal.SIGTERM


def test_a_fence_between_jobs_ends_nothing(tmp_path: Path) -> None:
    with pool_process(tmp_path / "fences", None) as pid:
        fencing.send(tmp_path / "fences", pid, "an-earlier-job")
        assert ended_by(pid, timeout=0.5) is None


def test_a_fence_for_a_process_that_is_gone_is_no_error(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    fencing.send(tmp_path / "fences", pid, "job-c")
    assert (tmp_path / "fences" / str(pid)).read_text() == "job-c"
