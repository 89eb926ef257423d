"""Memory a pool process reads a streamed job's output into, kept from job to job.

Why: output that is streamed is kept until the node's sink has sent it, and keeping it
in fresh memory costs a page fault per 4 KiB: a new page is zeroed, and a page the pool
process had when it forked the job's launcher is shared with the launcher and copied
at the first write. For a job printing 10 MB that is 2,500 faults in the process that
must keep the job's pipes empty, which slowed such a job by a third and more
(``benchmarks/logs.py``); capture alone reuses one read buffer and pays none of it.

An :class:`Arena` is one anonymous mapping marked ``MADV_DONTFORK``: a forked launcher
gets no copy of it, so its pages are never shared and, once touched, stay this
process's. The pump reads the job's output straight into it (``readv``, no allocation
and no copy) and the tee hands views of it on, so the next job that streams touches no
new page (huge pages where the host has them: 10 MB kept is written to memory, not to
cache, and larger pages make that cheaper). The cost: a pool process keeps as much of
it resident as the most one job streamed (at most :data:`ARENA_BYTES`); output past
that is kept as ordinary bytes.

Who may reuse it: :func:`lease` gives this process's arena to one job's sink, which
gives it back (:meth:`Arena.recycle`) only once it has sent every chunk, so that no
view of one job's output is ever overwritten with another's while a writer still
holds it. An arena that is not given back (a writer that timed out) is dropped with
its last view, and the next job leases a new one. A process forked after an arena was
made has no mapping of it: leases are per process id.
"""

from __future__ import annotations

import contextlib
import mmap
import os

ARENA_BYTES = 16 << 20
READ_BYTES = 1 << 20  # a pipe's most (``PIPE_BYTES``): one read empties it

_spare: dict[int, Arena] = {}  # by process id: the arena no job holds
_reads: dict[int, memoryview] = {}  # by process id: its read buffer


class Arena:
    """A bump allocator over one ``MADV_DONTFORK`` mapping (see the module docstring)."""

    def __init__(self, size: int = ARENA_BYTES) -> None:
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with contextlib.suppress(OSError):  # a kernel without it: forks share the pages
            self._map.madvise(mmap.MADV_DONTFORK)  # (copied on write, never used there)
        with contextlib.suppress(OSError):  # a host without transparent huge pages
            self._map.madvise(mmap.MADV_HUGEPAGE)  # fewer, larger pages to write into
        self._view = memoryview(self._map)
        self.pid = os.getpid()
        self.used = 0

    def space(self, limit: int) -> memoryview | None:
        """Up to ``limit`` free bytes to read into (None: the arena is full); what was
        read there is kept by :meth:`keep`."""
        size = min(limit, len(self._view) - self.used)
        return self._view[self.used:self.used + size] if size > 0 else None

    def keep(self, count: int) -> tuple[int, int]:
        """Keep the first ``count`` bytes of the last :meth:`space`: their span."""
        start, self.used = self.used, self.used + count
        return start, self.used

    def view(self, span: tuple[int, int]) -> memoryview:
        """The kept bytes of ``span`` (from :meth:`keep`, or two adjacent ones joined)."""
        return self._view[span[0]:span[1]]

    def recycle(self) -> None:
        """Every view of this arena is done with: let the next job of this process have it."""
        if self.pid == os.getpid():
            self.used = 0
            _spare[self.pid] = self


def lease() -> Arena:
    """This process's spare arena, or a new one: for one job, until it is recycled."""
    return _spare.pop(os.getpid(), None) or Arena()


def read_buffer() -> memoryview:
    """This process's buffer of :data:`READ_BYTES` to read a job's pipes into, for what
    is not streamed: valid until the next read (one job at a time reads in a process)."""
    pid = os.getpid()
    if pid not in _reads:
        _reads[pid] = Arena(READ_BYTES).view((0, READ_BYTES))
    return _reads[pid]
