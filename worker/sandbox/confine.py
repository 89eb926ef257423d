"""Confinement of a job's process, applied after fork and before exec (:func:`enter`).

Jobs are untrusted code that would otherwise run with every right of the
worker's user. Each mechanism is used where the host offers it
(:func:`worker.sandbox.isolation.probe` says which ones it does and, for each missing
one, why):

* **A job user.** A root worker drops the job to ``SANDRUN_JOB_USER``
  (``nobody``) first: root may write almost anything and is exempt from
  ``RLIMIT_NPROC``.
* **A user namespace per job** (``unshare(CLONE_NEWUSER)``, mapping only the
  job's own uid and gid). Since Linux 5.14 the kernel counts ``RLIMIT_NPROC``
  per user *and* namespace, so the limit set inside counts the job's own
  processes (threads included) and nothing else: a fork bomb gets ``EAGAIN`` at
  the limit. Without one, the limit is the job user's current task count plus
  the job's allowance, shared with whatever else that user starts meanwhile.
  The namespace also closes ptrace access, and so ``/proc/<pid>/environ`` and
  memory, of every process outside it, even of the same uid: the kernel asks a
  tracer to live in its target's user namespace or to hold CAP_SYS_PTRACE there.
* **Landlock** (Linux 5.13+, :mod:`worker.sandbox.landlock`): writes only beneath the
  job directory and to a few character devices; no ptrace of processes outside
  the job, hence no reading their ``/proc/<pid>/environ`` or memory; since ABI 6
  also no signals to them and no connecting to their abstract unix sockets.
* **A private /dev/shm** (a mount namespace with a small tmpfs) next to
  Landlock, so POSIX semaphores (``multiprocessing``) keep working.
* **An empty network namespace** when network isolation is on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from dataclasses import dataclass

from worker.sandbox import landlock

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
#: Size of a job's private /dev/shm (tmpfs pages escape RLIMIT_AS, so it is capped).
SHM_BYTES = 64 << 20
PR_SET_DUMPABLE = 4
#: Character devices a job may still open for writing; GPU devices are added when present.
WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(Exception):
    """A confinement step failed; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Confinement:
    """What is done to one job process before it execs (see the module docstring)."""

    max_processes: int
    user: tuple[int, int] | None = None  # (uid, gid) to drop to first
    user_namespace: bool = False
    network: bool = False
    writable: tuple[str, ...] = ()  # Landlock: the directories the job may change
    devices: tuple[str, ...] = WRITABLE_DEVICES
    landlock_abi: int = 0
    shm_bytes: int = 0  # > 0: a private tmpfs of this size on /dev/shm (user namespace only)
    exact_processes: bool = False  # no other process shares the job's uid or namespace
    oom_adjust: bool = False  # the job is the memory cgroup's OOM victim, not the worker


def _fail(what: str, hint: str = "") -> IsolationError:
    err = ctypes.get_errno()
    name = errno.errorcode.get(err, str(err))
    return IsolationError(f"{what}: {os.strerror(err)} ({name}){hint}")


def unshare(flags: int, what: str) -> None:
    """Call unshare(2); IsolationError naming ``what`` on failure."""
    if _libc.unshare(flags) != 0:
        raise _fail(f"cannot create {what}", "; the host must allow unprivileged user "
                    "namespaces (sysctl user.max_user_namespaces > 0, no AppArmor restriction) "
                    "or the worker needs CAP_SYS_ADMIN")


def prctl(option: int, value: int) -> None:
    """Call prctl(2); IsolationError on failure."""
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise _fail(f"prctl({option}, {value})")


def tasks_of(uid: int) -> int:
    """Tasks (threads included, as ``RLIMIT_NPROC`` counts them) that ``uid`` runs now."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                fields = dict(line.split(b":", 1) for line in fh if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid:
                total += int(fields[b"Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue  # it exited meanwhile
    return total


def _own_user_namespace(uid: int, gid: int, c: Confinement) -> None:
    """Enter a new user namespace that maps only ``uid``/``gid`` (and the network and
    mount namespaces ``c`` asks for)."""
    prctl(PR_SET_DUMPABLE, 1)  # a non-dumpable process's /proc/self files belong to root
    flags = CLONE_NEWUSER | (CLONE_NEWNET if c.network else 0) | (
        CLONE_NEWNS if c.shm_bytes else 0)
    unshare(flags, "a user namespace" + (" with a network namespace" if c.network else ""))
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"),
                       ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _private_shm(size: int) -> None:
    """Mount a private, size-capped tmpfs on /dev/shm: POSIX semaphores and shared memory
    (Python's multiprocessing) keep working under Landlock, apart from the host's."""
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0 or _libc.mount(
            b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
            f"size={size},mode=1777".encode()) != 0:
        raise _fail("cannot mount a private /dev/shm for the job")


def _open_rules(c: Confinement) -> list[tuple[int, bool]]:
    """O_PATH descriptors of what stays writable, opened before any privilege is dropped."""
    rules = []
    for path, is_dir in [(p, True) for p in c.writable] + [(p, False) for p in c.devices]:
        try:
            rules.append((os.open(path, os.O_PATH | os.O_CLOEXEC), is_dir))
        except FileNotFoundError:
            if is_dir:
                raise
    return rules


def enter(c: Confinement) -> None:
    """Confine the calling process, a single-threaded child that is about to exec the job.

    Order matters: paths are opened while they are still reachable, the network
    namespace that needs privilege is made before the job user is taken, the user
    namespace after it (so the job's own uid is mapped and counted), Landlock last.
    """
    rules = _open_rules(c) if c.landlock_abi and c.writable else []
    try:
        if c.oom_adjust:  # before the uid changes: /proc/self then belongs to root
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")
        if c.network and not c.user_namespace:
            unshare(CLONE_NEWNET, "a network namespace")
        uid, gid = os.getuid(), os.getgid()
        if c.user is not None:
            uid, gid = c.user
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        if c.user_namespace:
            _own_user_namespace(uid, gid, c)
            if c.shm_bytes:
                _private_shm(c.shm_bytes)
                rules += [(os.open("/dev/shm", os.O_PATH | os.O_CLOEXEC), True)] if rules else []
            limit = c.max_processes
        elif c.exact_processes:
            limit = c.max_processes
        else:  # this process is counted by tasks_of and becomes the job's first
            limit = tasks_of(uid) - 1 + c.max_processes
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
        if rules:
            landlock.restrict(c.landlock_abi, rules)
    finally:
        for fd, _ in rules:
            os.close(fd)
