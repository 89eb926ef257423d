"""Memory limits from cgroups: a job's memory limit is on what it really uses.

Why not ``RLIMIT_AS``: it counts reserved address space, which Node (V8), the JVM
and CUDA reserve by the gigabyte without touching it, so it kills them at start or
must be so high that it limits nothing; GPU jobs get no memory limit at all. A
memory cgroup counts what is charged: resident pages, page cache and kernel memory.

Why a *slot* per pool process: moving a process into a cgroup (writing
``cgroup.procs``) costs ~12 ms on our hosts (the kernel takes
``cgroup_threadgroup_rwsem`` for writing, which waits for an RCU grace period),
against a budget of ~3 ms per job. So each pool process moves itself once, on its
first job, into a cgroup of its own, ``<memory root>/sandrun/slot-<pid>``
(:func:`slot`), and every launcher and job it forks afterwards is born there for
nothing. Per job only a few file writes remain: :meth:`SlotCgroup.arm` before it
(limit = what the slot holds now + the job's memory + :data:`SLACK_BYTES` for the
pool process's own allocations meanwhile) and :meth:`SlotCgroup.disarm` after it
(peak, OOM kills, limit off again). Swap is limited with it, so it cannot extend it.
The memory root is the worker's own cgroup (:mod:`worker.sandbox.cgroupfs`).

Whom the OOM killer takes: it picks among the slot's processes, the pool process
among them, so the pool process exempts itself and each job makes itself the first
choice (:mod:`worker.sandbox.oomscore`; the launcher calls :func:`job_oom_preexec`).

What the limit lets through: page cache left by earlier jobs counts in the base,
so a job may use that much more once the kernel reclaims it. It is not dropped
before each job: v1 ``memory.force_empty`` reclaims everything, the pool process's
pages too, and is far slower than a job's budget.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass

from worker.sandbox import oomscore
from worker.sandbox.cgroupfs import (
    CgroupSupport,
    make_slot,
    own_cgroup,
    probe,
    sweep_stale,
)
from worker.sandbox.confine import IsolationError
from worker.sandbox.oomscore import job_oom_preexec

__all__ = ["SLACK_BYTES", "CgroupSupport", "MemoryUse", "SlotCgroup", "job_oom_preexec",
           "probe", "slot", "sweep_stale"]

#: Room above a job's own limit for what the pool process allocates while it waits.
SLACK_BYTES = 32 << 20
_FLAGS = os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """What one job used of its slot: the highest charge above the base, and whether
    the kernel killed one of its processes for want of memory."""

    peak_bytes: int
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class _Knobs:
    """The files of one cgroup version."""

    limit: str
    swap: str  # v1: the memory+swap limit, set per job; v2: the swap limit, 0 from joining
    usage: str
    peak: str
    events: str  # where the "oom_kill N" line is
    unlimited: bytes


_V1 = _Knobs("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.usage_in_bytes",
             "memory.max_usage_in_bytes", "memory.oom_control", b"-1")
_V2 = _Knobs("memory.max", "memory.swap.max", "memory.current", "memory.peak",
             "memory.events", b"max")


@dataclass(frozen=True, slots=True)
class _Armed:
    base: int
    oom_kills: int
    peak_before: int | None  # v2 without a resettable memory.peak: its value at arm()


def _oom_kills(text: bytes) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill":
            return int(value)
    return 0


class SlotCgroup:
    """The memory cgroup of one pool process and every job it forks (module docstring).

    Made by :meth:`join`; the constructor only opens an existing cgroup directory."""

    def __init__(self, path: str, version: str, origin: str) -> None:
        self.path, self.version, self.origin = path, version, origin
        self.protected = False  # whether the pool process is exempt from the OOM killer
        self._score_before = b"0"  # its oom_score_adj before, put back when it leaves
        self._knobs = _V1 if version == "v1" else _V2
        self._dir = os.open(path, os.O_PATH | os.O_DIRECTORY | _FLAGS)
        self._has_swap = os.path.exists(f"{path}/{self._knobs.swap}")
        self._peak_fd, self._peak_resets = -1, version == "v1"
        if version == "v2" and os.path.exists(f"{path}/memory.peak"):
            self._open_v2_peak()
        self._armed: _Armed | None = None
        self.room = 0  # what the armed limit allows above the base: the job's memory + slack

    def _open_v2_peak(self) -> None:
        """Keep memory.peak open: since Linux 6.12 a write resets it for reads through
        the same descriptor; before, it is the slot's high-water mark since it was made."""
        try:
            self._peak_fd = os.open("memory.peak", os.O_RDWR | _FLAGS, dir_fd=self._dir)
            os.write(self._peak_fd, b"reset")
            self._peak_resets = True
        except OSError:
            if self._peak_fd < 0:
                self._peak_fd = os.open("memory.peak", os.O_RDONLY | _FLAGS, dir_fd=self._dir)

    @classmethod
    def join(cls, name: str, support: CgroupSupport | None = None) -> SlotCgroup:
        """Move the calling process into ``<memory root>/sandrun/<name>`` (made if missing)
        and exempt it from the OOM killer where it may. Once per pool process: this is
        the slow step (~11 ms). Raises IsolationError saying what failed and how to fix it."""
        if not name or name in (".", "..") or "/" in name:
            raise IsolationError(f"{name!r} is no cgroup name; give one path component "
                                 "such as slot-<pid>")
        support = support or probe()
        if support.memory_root is None or support.version is None:
            raise IsolationError(f"jobs cannot get memory cgroups here: {support.why_not}")
        try:
            origin = own_cgroup(support.version)
        except OSError as exc:
            raise IsolationError(f"cannot find this process's memory cgroup ({exc}); mount "
                                 "/proc and the cgroup filesystem it names") from exc
        for _ in range(3):  # a concurrent sweep_stale may remove the empty directory
            path = make_slot(support.memory_root, support.version, name)
            with contextlib.suppress(FileNotFoundError):
                joined = cls._enter(path, support.version, origin)
                break
        else:
            raise IsolationError(f"the cgroup {path} keeps disappearing; is another "
                                 "process removing sandrun/ cgroups?")
        joined._score_before = oomscore.own()
        joined.protected = oomscore.set_own(b"-1000")
        return joined

    @classmethod
    def _enter(cls, path: str, version: str, origin: str) -> SlotCgroup:
        """Open the cgroup at ``path``, reset what a stale one of the name may have kept,
        and move the calling process in; on failure close it and remove it if empty."""
        joined = cls(path, version, origin)
        try:
            joined.unlimit()
            if version == "v1":  # a new v1 cgroup inherits its parent's setting
                joined._write("memory.oom_control", b"0", "join")
            elif joined._has_swap:
                joined._write("memory.swap.max", b"0", "join")
            joined._write("cgroup.procs", str(os.getpid()).encode(), "join")
        except BaseException:
            joined._close()
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        return joined

    def arm(self, memory_bytes: int) -> None:
        """Before a job: reset the peak, take what the slot holds now as the base, and
        limit the slot to base + ``memory_bytes`` + SLACK_BYTES, swap included."""
        knobs = self._knobs
        oom_kills = _oom_kills(self._read(knobs.events))
        peak_before = self._reset_peak()
        base = int(self._read(knobs.usage))
        self.room = memory_bytes + self._slack(memory_bytes)
        limit = str(base + self.room).encode()
        try:
            self._write(knobs.limit, limit, "arm")  # v1: memory first, memory+swap >= it
            if self._has_swap and self.version == "v1":
                self._write(knobs.swap, limit, "arm")
        except IsolationError:
            self.unlimit()
            raise
        self._armed = _Armed(base, oom_kills, peak_before)

    def disarm(self) -> MemoryUse:
        """After a job (all its processes gone): what it used; the limit is lifted again."""
        armed, self._armed = self._armed, None
        if armed is None:
            raise RuntimeError("disarm() without arm(): call arm() before each job")
        try:
            peak = self._peak()
            if armed.peak_before is not None and peak <= armed.peak_before:
                peak = armed.base  # the job set no new high-water mark: unknown, say 0
            killed = _oom_kills(self._read(self._knobs.events)) > armed.oom_kills
        finally:
            self.unlimit()
        return MemoryUse(max(0, peak - armed.base), killed)

    def unlimit(self) -> None:
        """Lift the limit (v1: memory+swap first, it may not drop below memory's)."""
        if self._has_swap and self.version == "v1":
            self._write(self._knobs.swap, self._knobs.unlimited, "lift the limit of")
        self._write(self._knobs.limit, self._knobs.unlimited, "lift the limit of")

    def _slack(self, memory_bytes: int) -> int:
        """Room above the job's limit: SLACK_BYTES, or more where the pool process cannot
        exempt itself (no CAP_SYS_RESOURCE for -1000). The OOM killer then ranks it by its
        whole resident size and a job at oom_score_adj 1000 by its own plus the slot's
        limit, so the limit must exceed the pool process's size for the job to go first:
        a job asking for less than that gets the difference as extra room."""
        if self.protected:
            return SLACK_BYTES
        return max(SLACK_BYTES, _resident_bytes() - memory_bytes + SLACK_BYTES)

    def leave_and_remove(self) -> None:
        """Move the calling process back to the cgroup it came from and remove the slot
        (at process shutdown, and in tests). IsolationError if processes remain in it."""
        try:
            with open(f"{self.origin}/cgroup.procs", "w") as fh:
                fh.write(str(os.getpid()))
        except OSError as exc:
            raise IsolationError(f"cannot move process {os.getpid()} back to {self.origin} "
                                 f"({exc.strerror}); the worker must be root or own it") from exc
        if _SLOTS.get(os.getpid()) is self:
            del _SLOTS[os.getpid()]
        if self.protected:
            oomscore.set_own(self._score_before)
        self._close()
        try:
            os.rmdir(self.path)
        except OSError as exc:
            raise IsolationError(f"cannot remove the cgroup {self.path} ({exc.strerror}): "
                                 "processes remain in it; kill them, then rmdir it") from exc

    def _close(self) -> None:
        os.close(self._dir)
        if self._peak_fd >= 0:
            os.close(self._peak_fd)

    def _reset_peak(self) -> int | None:
        if self.version == "v1":
            self._write(self._knobs.peak, b"0", "reset the peak of")
        elif self._peak_resets:
            os.pwrite(self._peak_fd, b"reset", 0)
        else:
            return self._peak()
        return None

    def _peak(self) -> int:
        if self._peak_fd >= 0:
            return int(os.pread(self._peak_fd, 64, 0))
        name = self._knobs.peak if self.version == "v1" else self._knobs.usage
        return int(self._read(name))

    def _read(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | _FLAGS, dir_fd=self._dir)
        try:
            return os.read(fd, 4096)
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes, doing: str) -> None:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_TRUNC | _FLAGS, dir_fd=self._dir)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise  # join() retries: the directory was removed under it
        except OSError as exc:
            raise IsolationError(_failed(doing, self.path, name, data, exc)) from exc


def _failed(doing: str, path: str, name: str, data: bytes, exc: OSError) -> str:
    """What went wrong writing ``data`` to ``name`` of the cgroup ``path``, and the fix."""
    what = (f"cannot {doing} the cgroup {path}: writing {data.decode()} to {name} failed "
            f"({exc.strerror})")
    if doing == "arm" and exc.errno == errno.EBUSY:
        return f"{what}; the slot holds more than the limit and the kernel cannot reclaim it"
    if doing == "join":
        return (f"{what}; the worker must be root or own the cgroup and the cgroup.procs of "
                "the one it comes from (cgroup v2: a common delegated ancestor)")
    return f"{what}; the worker must be root or own the cgroup"


def _resident_bytes() -> int:
    """This process's resident set size (VmRSS) in bytes; 0 if unreadable."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_SLOTS: dict[int, SlotCgroup | None] = {}


def joined() -> bool:
    """Whether this process has joined its slot (without joining it)."""
    return _SLOTS.get(os.getpid()) is not None


def slot() -> SlotCgroup | None:
    """This process's slot, joined on the first call (``slot-<pid>``); None where
    :func:`probe` says memory cgroups are unavailable. A forked child gets its own."""
    pid = os.getpid()
    if pid not in _SLOTS:
        _SLOTS.clear()  # a forked child does not own its parent's slot
        support = probe()
        _SLOTS[pid] = SlotCgroup.join(f"slot-{pid}", support) if support.memory_root else None
    return _SLOTS[pid]
