"""Naming how a job ended, from the launcher's report, its stderr and its memory cgroup.

Outcomes: completed, failed, timeout, cpu_limit, memory_limit, process_limit,
signal. The kernel says little about *why* a process died, so limits are read
from the signs each leaves: SIGXCPU or a SIGKILL at the CPU limit, an OOM kill
counted by the job's memory cgroup (or, under rlimits, an allocation error in
stderr), a fork failure that mattered.
"""

from __future__ import annotations

import signal

from worker.models import Job
from worker.sandbox.launcher import LaunchReport

#: stderr of a job whose fork or spawn failed for want of processes (bash, Python, node).
FORK_FAILED = ("Resource temporarily unavailable", "EAGAIN")


def _limit_hit(job: Job, report: LaunchReport, stderr: str) -> str | None:
    """The limit that ended the job, if any: process_limit, cpu_limit or memory_limit.

    ``process_limit`` needs both a fork failure in stderr and a sign that it
    mattered (strays left, a timeout, a non-zero exit): a fork bomb whose main
    process returns at once is caught by its strays."""
    fork_failed = any(s in stderr for s in FORK_FAILED) and ("fork" in stderr or
                                                             "spawn" in stderr)
    if fork_failed and (report.strays or report.timed_out or report.exit_code != 0):
        return "process_limit"
    # SIGXCPU comes from RLIMIT_CPU's soft limit (the CPU time read back through
    # bwrap's reaper may fall short of it by a tick); SIGKILL from its hard limit.
    if report.signal == signal.SIGXCPU or (report.signal == signal.SIGKILL and
                                           report.cpu_seconds >= job.cpu_seconds - 0.05):
        return "cpu_limit"
    memory_hint = any(s in stderr for s in ("MemoryError", "Cannot allocate memory",
                                            "std::bad_alloc", "out of memory"))
    return "memory_limit" if memory_hint and not job.needs_gpu else None


def classify(job: Job, report: LaunchReport, stderr: str) -> str:
    """Name the outcome: completed, failed, process_limit, timeout, cpu_limit,
    memory_limit, signal."""
    if report.error:
        return "failed"
    limit = _limit_hit(job, report, stderr)
    if report.timed_out and limit != "process_limit":
        return "timeout"
    return limit or ("signal" if report.signal is not None else
                     "completed" if report.exit_code == 0 else "failed")
