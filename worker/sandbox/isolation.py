"""Which confinement a job gets (:func:`plan_confinement`): the settings, the job user,
and what this host offers (:func:`probe`), which is measured, not assumed.

The mechanisms themselves, and why each is used, are in :mod:`worker.sandbox.confine`.
Where one is missing, ``auto`` settings run jobs without it and say so in the
result's ``isolation`` and in :class:`HostSupport` notes; settings that demand
it refuse the job (``isolation_unavailable``).
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from worker.sandbox import bwrap, cgroups, landlock, seccomp
from worker.sandbox.confine import SHM_BYTES, WRITABLE_DEVICES, Confinement, IsolationError, enter


class IsolationUnavailable(IsolationError):
    """The settings demand a confinement this host cannot give: the job is refused."""


@dataclass(frozen=True, slots=True)
class HostSupport:
    """What this host offers jobs running as one user; ``notes`` say why something is not."""

    user_namespaces: bool
    network: bool
    landlock_abi: int
    process_limit: str  # "per-job", "shared" (with the job user's other processes) or "none"
    notes: tuple[str, ...] = ()
    view: bool = False  # bubblewrap builds each job a root of its own
    seccomp: bool = False  # a seccomp filter can be built and loaded
    cgroup: str | None = None  # "v1" or "v2": memory limits from a cgroup; None: rlimits


@functools.cache
def writable_devices() -> tuple[str, ...]:
    """The character devices jobs may write: the null-like ones and any GPU devices
    (looked up once per process: a GPU appearing later needs a worker restart)."""
    return WRITABLE_DEVICES + tuple(sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dri/*")))


@functools.cache
def job_user_ids(name: str) -> tuple[int, int] | None:
    """The (uid, gid) a root worker runs jobs as; None when jobs keep the worker's user
    (a worker that is not root, or ``SANDRUN_JOB_USER=root``)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        ids = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not name.isdigit():
            raise IsolationError(f"job user {name!r} does not exist on this host; set "
                                 "SANDRUN_JOB_USER to an unprivileged user such as nobody, "
                                 "or to a numeric uid") from None
        ids = int(name), int(name)
    return None if ids[0] == 0 else ids


def hand_over(root: str | os.PathLike[str], user: tuple[int, int] | None) -> None:
    """Give the job directory and its files to the job user (a root worker's jobs)."""
    if user is None:
        return
    for parent in Path(root).resolve().parents:  # interpreters open their script by full path
        info = os.stat(parent)
        bit = 0o100 if info.st_uid == user[0] else 0o010 if info.st_gid == user[1] else 0o001
        if not info.st_mode & bit:
            raise IsolationError(f"the job user (uid {user[0]}) cannot reach the job directory "
                                 f"{root}: {parent} is not searchable for it; put job "
                                 "directories where every user may pass (such as /tmp)")
    os.chown(root, *user)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), *user, follow_symlinks=False)


def _attempt(c: Confinement, fork_after: bool = False) -> str | None:
    """Enter ``c`` in a throw-away child; None if it worked, else why not.

    With ``fork_after`` (and ``max_processes=1``) the child also checks that the
    kernel refuses it a second process, that is that the limit is enforced.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            enter(c)
            if fork_after:
                try:
                    if os.fork() == 0:
                        os._exit(0)
                    os.write(write_end, b"the kernel does not enforce RLIMIT_NPROC for this user")
                except BlockingIOError:
                    code = 0
            else:
                code = 0
        except BaseException as exc:
            os.write(write_end, str(exc).encode()[:2000])
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        why = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else why or "the probe child crashed"


def _kernel() -> tuple[int, ...]:
    release = os.uname().release.split("-")[0].split(".")
    return tuple(int(part) for part in release[:2] if part.isdigit())


@functools.cache
def probe(user: tuple[int, int] | None = None) -> HostSupport:
    """Which mechanisms work here for jobs running as ``user`` (None: the worker's user).

    Forks throw-away children once per process and user (a few milliseconds).
    """
    notes = []
    userns_error = _attempt(Confinement(1 << 20, user, user_namespace=True,
                                        shm_bytes=SHM_BYTES if os.path.isdir("/dev/shm") else 0))
    if userns_error:
        notes.append(f"no user namespace per job ({userns_error})")
    net_error = _attempt(Confinement(1 << 20, user, not userns_error, network=True))
    if net_error:
        notes.append(f"no network isolation ({net_error})")
    abi = landlock.abi()
    if not abi:
        notes.append("no Landlock: the kernel is older than 5.13 or boots without 'landlock' "
                     "in its lsm= list, so jobs may write wherever the job user may")
    limit = "per-job" if not userns_error and _kernel() >= (5, 14) else "shared"
    if (user[0] if user else os.getuid()) == 0:
        limit = "none"
        notes.append("jobs run as root, which RLIMIT_NPROC does not limit: set "
                     "SANDRUN_JOB_USER to an unprivileged user")
    elif why := _attempt(Confinement(1, user, not userns_error), fork_after=True):
        limit = "none"
        notes.append(f"no process limit ({why})")
    view_error = bwrap.unavailable(user[0] if user else None)
    if view_error:
        notes.append(f"no filesystem view ({view_error})")
    seccomp_error = seccomp.unavailable()
    if seccomp_error:
        notes.append(seccomp_error)
    memory = cgroups.probe()
    if memory.why_not:
        notes.append(f"memory limits are rlimits, not cgroups ({memory.why_not})")
    return HostSupport(not userns_error, not net_error or not view_error, abi, limit,
                       tuple(notes), view=not view_error, seccomp=not seccomp_error,
                       cgroup=memory.version if not memory.why_not else None)
