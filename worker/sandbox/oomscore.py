"""Whom the OOM killer of a slot cgroup takes (:mod:`worker.sandbox.cgroups`): the job.

A slot holds the pool process, its launchers and their jobs, and the kernel kills
the one with the highest ``oom_score_adj``-weighted resident memory. So the pool
process exempts itself when it joins (-1000; lowering needs CAP_SYS_RESOURCE), the
launchers inherit that, and every job raises its own to 1000 before it execs
(:func:`job_oom_preexec`; raising needs no privilege).

What the kernel does, measured in tests/worker/sandbox/test_cgroups.py: a forked
child inherits its parent's value; a process whose uid changed is not dumpable, so
its ``/proc/self`` files belong to root and it cannot open ``oom_score_adj`` any
more, whatever the value; a value written by a holder of CAP_SYS_RESOURCE is also
the floor below which the process may not go again without it. So a job raised by
a root worker with that capability stays at 1000; one raised without it may lower
itself back to 0, the pool process's value then, and the choice goes by size.
"""

from __future__ import annotations

import os

from worker.sandbox.confine import IsolationError

OOM_SCORE_ADJ = "/proc/self/oom_score_adj"
#: Bit of CAP_SYS_RESOURCE in the CapEff mask of /proc/self/status.
CAP_SYS_RESOURCE = 24


def may_lower() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE, which lowering oom_score_adj needs."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def own() -> bytes:
    """This process's oom_score_adj, as the file holds it."""
    with open(OOM_SCORE_ADJ, "rb") as fh:
        return fh.read().strip()


def set_own(value: bytes) -> bool:
    """Set this process's oom_score_adj; False where the kernel does not allow it."""
    try:
        fd = os.open(OOM_SCORE_ADJ, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
    except PermissionError:
        return False
    return True


def job_oom_preexec() -> None:
    """In the job's process between fork and exec, *before the job user is taken*
    (afterwards the file cannot be opened): make it the OOM killer's first choice.
    IsolationError if the kernel refuses."""
    if not set_own(b"1000"):
        raise IsolationError("cannot raise the job's oom_score_adj to 1000 (permission "
                             "denied); call job_oom_preexec before the job user is taken")


def unprotected_note() -> tuple[str, ...]:
    """What :class:`worker.sandbox.cgroupfs.CgroupSupport` notes when the pool process
    cannot exempt itself (nothing when it can)."""
    if may_lower():
        return ()
    return ("the worker lacks CAP_SYS_RESOURCE, so a pool process cannot exempt itself from "
            "its slot's OOM killer (oom_score_adj -1000) and a job may lower its own score "
            "from 1000 back to 0; the kernel then kills whichever holds the most memory, "
            "which may be the pool process; grant the worker CAP_SYS_RESOURCE (docker: "
            "--cap-add SYS_RESOURCE) to make jobs the only victims",)
