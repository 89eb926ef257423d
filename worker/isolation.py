"""Confinement of a job's process, applied after fork and before exec.

Jobs are untrusted code that would otherwise run with every right of the
worker's user. Each mechanism is used where the host offers it; :func:`probe`
says which ones it does and, for each missing one, why:

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
* **Landlock** (Linux 5.13+, :mod:`worker.landlock`): writes only beneath the
  job directory and to a few character devices; no ptrace of processes outside
  the job, hence no reading their ``/proc/<pid>/environ`` or memory; since ABI 6
  also no signals to them and no connecting to their abstract unix sockets.
* **An empty network namespace** when network isolation is on.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import os
import pwd
import resource
from dataclasses import dataclass
from pathlib import Path

from worker import landlock

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE = 4
#: Character devices a job may still open for writing; GPU devices are added when present.
WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(Exception):
    """A confinement step failed; the message says which and how to fix it."""


class IsolationUnavailable(IsolationError):
    """The settings demand a confinement this host cannot give: the job is refused."""


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


@dataclass(frozen=True, slots=True)
class HostSupport:
    """What this host offers jobs running as one user; ``notes`` say why something is not."""

    user_namespaces: bool
    network: bool
    landlock_abi: int
    process_limit: str  # "per-job", "shared" (with the job user's other processes) or "none"
    notes: tuple[str, ...] = ()


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


@functools.cache
def writable_devices() -> tuple[str, ...]:
    """The character devices jobs may write: the null-like ones and any GPU devices
    (looked up once per process: a GPU appearing later needs a worker restart)."""
    return WRITABLE_DEVICES + tuple(sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dri/*")))


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
                               "SANDRUN_JOB_USER to an unprivileged user such as nobody, or "
                               "to a numeric uid") from None
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


def _own_user_namespace(uid: int, gid: int, network: bool) -> None:
    """Enter a new user namespace (and network namespace) that maps only ``uid``/``gid``."""
    prctl(PR_SET_DUMPABLE, 1)  # a non-dumpable process's /proc/self files belong to root
    unshare(CLONE_NEWUSER | (CLONE_NEWNET if network else 0),
            "a user namespace" + (" with a network namespace" if network else ""))
    for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"),
                       ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


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
        if c.network and not c.user_namespace:
            unshare(CLONE_NEWNET, "a network namespace")
        uid, gid = os.getuid(), os.getgid()
        if c.user is not None:
            uid, gid = c.user
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        if c.user_namespace:
            _own_user_namespace(uid, gid, c.network)
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
    userns_error = _attempt(Confinement(1 << 20, user, user_namespace=True))
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
    return HostSupport(not userns_error, not net_error, abi, limit, tuple(notes))


def plan_confinement(root: str, *, max_processes: int, filesystem: str, network: bool,
                     job_user: str, support: HostSupport | None = None
                     ) -> tuple[Confinement, str]:
    """How to confine a job whose directory is ``root``, and the isolation it gets
    (``process+pids+filesystem+network``, naming only what applies).

    ``filesystem`` is auto, required or off (``SANDRUN_FILESYSTEM_ISOLATION``);
    ``support`` is what the host offers (probed when None). Raises
    IsolationUnavailable when the settings demand what the host lacks."""
    user = job_user_ids(job_user)
    support = support or probe(user)
    landlock_on = filesystem != "off" and support.landlock_abi > 0
    if filesystem == "required" and not landlock_on:
        raise IsolationUnavailable(
            "SANDRUN_FILESYSTEM_ISOLATION is 'required', but this host has no Landlock "
            "(Linux 5.13+ with 'landlock' among its LSMs); enable it, or set "
            "SANDRUN_FILESYSTEM_ISOLATION=auto to run jobs without it")
    if network and not support.network:
        raise IsolationUnavailable("network isolation is on, but this host cannot give it: "
                                   + "; ".join(support.notes))
    labels = ["process", "pids" if support.process_limit == "per-job" else "",
              "filesystem" if landlock_on else "", "network" if network else ""]
    plan = Confinement(max_processes, user, support.user_namespaces, network,
                       (root,) if landlock_on else (), writable_devices(), support.landlock_abi)
    return plan, "+".join(label for label in labels if label)
