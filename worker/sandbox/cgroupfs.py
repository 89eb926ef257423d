"""Where this process's memory cgroup is, whether the worker may create cgroups in it
(:func:`probe`), and the removal of slots left behind (:func:`sweep_stale`); used by
:mod:`worker.sandbox.cgroups`.

Two layouts are found in ``/proc/self/mountinfo``: cgroup v1, with the memory
controller mounted as its own hierarchy (``/sys/fs/cgroup/memory``, maybe next to a
v2 tree without controllers at ``/sys/fs/cgroup/unified``), and cgroup v2 only, with
``memory`` listed in the cgroup's ``cgroup.controllers``. The memory root is the
cgroup the worker runs in (``/proc/self/cgroup``), not the top of the hierarchy, so
that whatever limits the worker's own unit or container, keeps limiting its jobs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass

from worker.sandbox.confine import IsolationError
from worker.sandbox.oomscore import unprotected_note

MOUNTINFO = "/proc/self/mountinfo"
OWN_CGROUPS = "/proc/self/cgroup"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class CgroupSupport:
    """Whether jobs can get memory cgroups here: ``memory_root`` is the cgroup under which
    ``sandrun/`` is made (None: not available, ``why_not`` says why and how to fix it);
    ``notes`` say what works, but less well than it could."""

    version: str | None  # "v1", "v2" or None
    memory_root: str | None
    why_not: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mount:
    """One cgroup filesystem of mountinfo: the cgroup it shows (``root``) at ``point``."""

    root: str
    point: str
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # super options: the v1 controllers, such as "memory"


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def cgroup_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts listed in ``mountinfo`` (the text of the file)."""
    mounts = []
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if sep and len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), tail[0],
                                frozenset(tail[2].split(","))))
    return mounts


def _below(mount: Mount, path: str) -> str | None:
    """The directory of cgroup ``path`` under ``mount``; None if the mount does not show it."""
    rel = os.path.relpath(path, mount.root)
    if rel == ".." or rel.startswith("../"):
        return None
    return os.path.normpath(os.path.join(mount.point, rel))


def locate(mountinfo: str, own_cgroups: str) -> tuple[str, str] | str:
    """``(version, directory)`` of this process's memory cgroup, from the texts of
    /proc/self/mountinfo and /proc/self/cgroup; a reason if none is mounted.

    A v2 directory is a candidate only: whether it has the memory controller is
    read from the directory itself (:func:`probe`)."""
    paths: dict[str, str] = {}
    for line in own_cgroups.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for name in controllers.split(",") if hierarchy != "0" else ["(v2)"]:
            paths[name] = path
    mounts = cgroup_mounts(mountinfo)
    for mount in mounts:
        if mount.fstype == "cgroup" and "memory" in mount.options and "memory" in paths:
            found = _below(mount, paths["memory"])
            return ("v1", found) if found else (
                f"this process's memory cgroup {paths['memory']} lies outside the part of "
                f"the hierarchy mounted at {mount.point}; mount the whole memory hierarchy")
    for mount in mounts:
        if mount.fstype == "cgroup2" and "(v2)" in paths:
            found = _below(mount, paths["(v2)"])
            if found:
                return "v2", found
    return ("no memory cgroup is mounted: mount cgroup2 on /sys/fs/cgroup with the memory "
            "controller enabled (or a cgroup v1 memory hierarchy)")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _may_create(directory: str) -> str | None:
    """Why the worker cannot make and fill cgroups under ``directory`` (None: it can)."""
    if os.access(directory, os.W_OK) and os.access(f"{directory}/cgroup.procs", os.W_OK):
        return None
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        return (f"the cgroup filesystem at {directory} is mounted read-only; mount it "
                "read-write (docker mounts it read-only unless the container is privileged)")
    return (f"the worker (uid {os.geteuid()}) may not create cgroups in {directory}; run "
            "the worker as root, or delegate the cgroup to the worker's user (chown it)")


def memory_delegable(directory: str) -> str | None:
    """Why child cgroups of the v2 cgroup ``directory`` cannot get the memory controller
    (None: they can; it is enabled in ``cgroup.subtree_control`` if it was not)."""
    if "memory" not in _read(f"{directory}/cgroup.controllers").split():
        return (f"the memory controller is not enabled for {directory}; enable it in its "
                "parent's cgroup.subtree_control (systemd: Delegate=yes or MemoryAccounting=yes)")
    if "memory" in _read(f"{directory}/cgroup.subtree_control").split():
        return None
    try:
        with open(f"{directory}/cgroup.subtree_control", "w") as fh:
            fh.write("+memory")
    except OSError as exc:
        return (f"cannot enable the memory controller for the children of {directory} "
                f"({exc.strerror}): cgroup v2 allows it only in the root cgroup or one "
                "without processes, and the worker runs in this one; run the worker in the "
                "root cgroup (slots beneath a delegated cgroup are not supported yet)")
    return None


def make_slot(root: str, version: str, name: str) -> str:
    """``<root>/sandrun/<name>``, made if missing, with the memory controller (v2);
    IsolationError if it cannot be made."""
    parent = f"{root}/sandrun"
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(parent)
        if version == "v2" and (why := memory_delegable(parent)):
            raise IsolationError(why)
        with contextlib.suppress(FileExistsError):
            os.mkdir(f"{parent}/{name}")
    except OSError as exc:
        raise IsolationError(f"cannot create the cgroup {parent}/{name} ({exc.strerror}); "
                             "run the worker as root, or delegate the cgroup "
                             f"{root} to the worker's user") from exc
    return f"{parent}/{name}"


@functools.cache
def probe() -> CgroupSupport:
    """Whether this host gives jobs memory cgroups, measured once per process.

    On v2 it may enable the memory controller in the worker's cgroup's
    ``cgroup.subtree_control`` (that is what "can be enabled" is found out by)."""
    try:
        found = locate(_read(MOUNTINFO), _read(OWN_CGROUPS))
    except OSError as exc:
        return CgroupSupport(None, None, f"cannot read {exc.filename} ({exc.strerror}); "
                             "mount /proc")
    if isinstance(found, str):
        return CgroupSupport(None, None, found)
    version, directory = found
    try:
        why = _may_create(directory)
        if why is None and version == "v2":
            why = memory_delegable(directory)
    except OSError as exc:
        why = (f"cannot read the cgroup {directory} ({exc.strerror}); mount the cgroup "
               "filesystem of this process's cgroup namespace")
    if why:
        return CgroupSupport(version, None, why)
    return CgroupSupport(version, directory, None, unprotected_note())


def own_cgroup(version: str) -> str:
    """The directory of the cgroup this process is in now, in the hierarchy of ``version``."""
    found = locate(_read(MOUNTINFO), _read(OWN_CGROUPS))
    if isinstance(found, str) or found[0] != version:
        raise OSError(f"this process is in no {version} memory cgroup")
    return found[1]


def sweep_stale(root: str | None = None) -> list[str]:
    """Remove the empty ``sandrun/slot-*`` cgroups under ``root`` (default: the probed
    memory root) left by pool processes that are gone; at worker start. Returns their
    paths. A slot whose pid is alive is kept: that process may be joining it now."""
    root = root or probe().memory_root
    if root is None or not os.path.isdir(f"{root}/sandrun"):
        return []
    removed = []
    for entry in os.scandir(f"{root}/sandrun"):
        pid = entry.name.removeprefix("slot-")
        if pid == entry.name or not entry.is_dir(follow_symlinks=False):
            continue  # not a slot: a control file, or a cgroup given another name
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            if _read(f"{entry.path}/cgroup.procs").strip():
                continue
            os.rmdir(entry.path)
        except OSError:
            continue  # a process arrived, or it has cgroups of its own
        removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    return True
