"""Where jobs live on the host, and as whom they run: a uid and a disk of their own.

Why: jobs from different producers must not read each other's code, inputs or
outputs, even on a host where no filesystem view can be built. So a root worker
never runs two jobs as the same user at once: each pool process takes a **slot**,
one uid of ``SANDRUN_JOB_UIDS`` (default 200000-200999, uids no account on the
host uses), held by an exclusive ``flock`` for the process's lifetime, so
workers sharing a host never pick the same uid. A uid is the host's, whatever job
directory root a worker uses, so it is locked twice: in ``/run/sandrun/job-uids/``
(root, 0700), shared by every worker of the host, and beneath the root, where the
sweep of that root looks (and where workers before the host lock took theirs).

Layout, beneath the job directory root (``/tmp`` unless configured)::

    sandrun-jobs/            root, 0711: others may pass, nobody may list
      .locks/uid-<N>         root, 0700: the slot locks of this root
      slot-<N>/              root, 0711; a tmpfs of SANDRUN_JOB_DISK_MB when root
        job-<random>/        uid N, 0700: one job's directory

The tmpfs caps what one job may write in total (``ENOSPC`` past it) and takes
everything with it when it is emptied. A slot found on disk whose lock nobody
holds belonged to a worker that died: it is emptied and removed when a slot is
taken (:func:`sweep`), so nothing a job wrote outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from worker.sandbox.collect import remove_tree
from worker.sandbox.confine import IsolationError

JOBS_DIR = "sandrun-jobs"
#: Where the host's uid locks live (``/run`` is the host's, root-only and emptied at boot);
#: beneath the temporary directory where a host has no ``/run``.
UID_LOCKS = ("/run/sandrun", "job-uids")
MNT_DETACH = 2
MS_NOSUID, MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class UidRange:
    """The uids jobs may run as: ``first``..``last`` inclusive."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """``"200000-200999"`` (or a single uid); ValueError saying the expected form."""
        first, _, last = text.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"job uid range {text!r} is not of the form FIRST-LAST, such as "
                             "200000-200999") from None
        if not 0 < low <= high < 2**32 - 1:
            raise ValueError(f"job uid range {text!r} must be ascending, above 0 (root)")
        return cls(low, high)


@dataclass(frozen=True, slots=True)
class Slot:
    """One pool process's uid and directory; held until the process exits."""

    uid: int
    base: Path  # slot-<uid>: job directories are made here
    lock_fd: int  # the lock beneath the root (what its sweep checks)
    disk_bytes: int  # 0: no tmpfs (the worker is not root)
    host_lock_fd: int = -1  # the host's lock of the uid


def _owned_dir(path: Path, mode: int) -> None:
    """``path`` as a real directory of ours with ``mode``: made if missing, refused if it
    is a link or another user's (someone may have planted it to steer the worker)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise IsolationError(f"{path} is not a directory owned by the worker's user; remove "
                             "it (another user may have planted it) or set "
                             "SANDRUN_WORKDIR_ROOT to a directory only the worker controls")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def uid_locks() -> Path:
    """The host's uid lock directory (module docstring), made and checked."""
    top = Path(UID_LOCKS[0]) if os.path.isdir("/run") else \
        Path(tempfile.gettempdir()) / "sandrun-run"
    _owned_dir(top, 0o700)
    locks = top / UID_LOCKS[1]
    _owned_dir(locks, 0o700)
    return locks


def jobs_root(workdir_root: str | None) -> Path:
    """``<root>/sandrun-jobs``, made and checked (root-owned 0711)."""
    root = Path(workdir_root or tempfile.gettempdir()) / JOBS_DIR
    _owned_dir(root, 0o711)
    return root


def _is_mount(path: Path) -> bool:
    try:
        return os.lstat(path).st_dev != os.lstat(path.parent).st_dev
    except OSError:
        return False


def _empty_slot(base: Path) -> None:
    """Remove everything beneath ``base`` (a slot directory), unmounting its tmpfs."""
    while _is_mount(base):
        if _libc.umount2(bytes(base), MNT_DETACH) != 0:
            break
    if base.is_dir() and not base.is_symlink():
        remove_tree(base)


def _mount_disk(base: Path, size: int) -> None:
    options = f"size={size},mode=0711,uid=0,gid=0".encode()
    if _libc.mount(b"tmpfs", bytes(base), b"tmpfs", MS_NOSUID | MS_NODEV,
                   options) != 0:
        err = ctypes.get_errno()
        raise IsolationError(f"cannot mount a {size >> 20} MiB tmpfs on {base} to cap the "
                             f"job's disk use: {os.strerror(err)}; set SANDRUN_JOB_DISK_MB=0 "
                             "to run jobs without a disk cap")


def _try_lock(locks: Path, uid: int) -> int | None:
    fd = os.open(locks / f"uid-{uid}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def sweep(root: Path) -> list[int]:
    """Empty and remove slot directories no live process holds; the uids swept."""
    swept = []
    locks = root / ".locks"
    for entry in os.scandir(root):
        if not entry.name.startswith("slot-") or not entry.name[5:].isdigit():
            continue
        fd = _try_lock(locks, int(entry.name[5:]))
        if fd is None:
            continue
        try:
            _empty_slot(Path(entry.path))
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)
            swept.append(int(entry.name[5:]))
        finally:
            os.close(fd)
    return swept


def acquire(workdir_root: str | None, uids: UidRange, disk_bytes: int) -> Slot:
    """Take the first free uid of ``uids`` for this process, with an empty slot directory
    (a tmpfs of ``disk_bytes`` when > 0). IsolationError when every uid is taken."""
    root = jobs_root(workdir_root)
    locks, host_locks = root / ".locks", uid_locks()
    _owned_dir(locks, 0o700)
    sweep(root)
    for uid in range(uids.first, uids.last + 1):
        host_fd = _try_lock(host_locks, uid)
        if host_fd is None:
            continue
        fd = _try_lock(locks, uid)
        if fd is None:  # held in this root by a worker that takes no host lock
            os.close(host_fd)
            continue
        base = root / f"slot-{uid}"
        _empty_slot(base)
        _owned_dir(base, 0o711)
        if disk_bytes:
            _mount_disk(base, disk_bytes)
        return Slot(uid, base, fd, disk_bytes, host_fd)
    raise IsolationError(f"every job uid of {uids.first}-{uids.last} is taken by a running "
                         "pool process on this host; widen SANDRUN_JOB_UIDS")


def new_jobdir(parent: Path, owner: tuple[int, int] | None) -> Path:
    """A fresh job directory beneath ``parent``, 0700, owned by ``owner`` when given."""
    path = Path(tempfile.mkdtemp(prefix="job-", dir=parent))
    if owner is not None:
        os.chown(path, *owner)
    return path


def release(slot: Slot) -> None:
    """Empty and remove ``slot``'s directory, then free its uid (the process is done)."""
    try:
        _empty_slot(slot.base)
        with contextlib.suppress(OSError):
            os.rmdir(slot.base)
    finally:
        os.close(slot.lock_fd)
        if slot.host_lock_fd >= 0:
            os.close(slot.host_lock_fd)
