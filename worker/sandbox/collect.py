"""Reading a finished job's directory back without letting the job steer the reads.

The job owned its directory until it ended, so everything in it is hostile: a
symlink at any component (``x -> /etc`` and the output ``x/shadow``), a hard
link to a file of the host, a mount point, 20,000 files, 1,100 nested
directories. :func:`collect_outputs` therefore walks the tree itself from a
directory descriptor, opening every component relative to its parent with
``O_NOFOLLOW`` (a symlink is never followed, wherever it is), accepting only
regular files with one link on the job directory's own device, iteratively (no
recursion limit), and matching the job's patterns against the relative paths the
walk yields. It stops at caps on file size, total size, file count, directory
depth and entries visited, and says so (``truncated``).

:func:`remove_tree` deletes a job directory the same way: iteratively, through
descriptors, never following a link, and never raising.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from worker.models import OutputFile
from worker.stores.outputs import CollectedOutput

MAIN_SCRIPT_PREFIX = "__sandrun_main__"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class CollectLimits:
    """How much of a job directory is read back."""

    file_bytes: int = 64 * 1024 * 1024
    total_bytes: int = 256 * 1024 * 1024
    files: int = 1000
    depth: int = 32
    entries: int = 100_000


@dataclass(slots=True)
class _Walk:
    """What a collection has read so far."""

    limits: CollectLimits
    patterns: list[str]
    inputs: dict[str, str]
    device: int
    visited: int = 0
    total: int = 0
    truncated: bool = False
    collected: list[CollectedOutput] = field(default_factory=list)


@dataclass(slots=True)
class _Frame:
    """One open directory of a depth-first walk: its fd, its path, the names left."""

    fd: int
    prefix: str
    names: Iterator[str]
    name: str = ""


def _frame(fd: int, prefix: str, name: str = "") -> _Frame:
    try:
        names = sorted(os.listdir(fd))
    except OSError:
        names = []
    return _Frame(fd, prefix, iter(names), name)


def _pattern_matches(pattern: str, rel: str) -> bool:
    """Whether ``rel`` (a file's path in the job directory) is taken by ``pattern``.

    Segments match like ``fnmatch``; ``**`` matches any number of directories; a
    pattern that names a directory (``results``, ``results/``, ``out/*``) takes every
    file below it."""
    want = [p for p in pattern.strip("/").split("/") if p not in ("", ".")] or ["*"]
    have = rel.split("/")

    def match(i: int, j: int) -> bool:
        while i < len(want):
            if want[i] == "**":
                return any(match(i + 1, k) for k in range(j, len(have) + 1))
            if j >= len(have) or not fnmatch.fnmatchcase(have[j], want[i]):
                return False
            i, j = i + 1, j + 1
        return True  # the whole pattern matched this path or a directory above it

    return match(0, 0)


def _visit(walk: _Walk, frame: _Frame, name: str, depth: int) -> _Frame | None:
    """Look at one entry: collect a matching file, or return the frame of a directory to
    descend into (None for anything else, and for what a cap stops)."""
    try:
        info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
    except OSError:
        return None
    rel = f"{frame.prefix}{name}"
    if stat.S_ISREG(info.st_mode):
        _take(walk, frame.fd, name, rel)
    elif stat.S_ISDIR(info.st_mode) and info.st_dev == walk.device:
        if depth >= walk.limits.depth:
            walk.truncated = True
            return None
        try:
            return _frame(os.open(name, DIR_FLAGS, dir_fd=frame.fd), f"{rel}/", name)
        except OSError:  # replaced by something else since the stat: skipped
            return None
    return None


def _take(walk: _Walk, dir_fd: int, name: str, rel: str) -> None:
    """Collect one regular file the patterns take, within the caps."""
    if rel.startswith(MAIN_SCRIPT_PREFIX) or not any(
            _pattern_matches(p, rel) for p in walk.patterns):
        return
    if len(walk.collected) >= walk.limits.files:
        walk.truncated = True
        return
    data = _read(name, dir_fd, walk, walk.limits.total_bytes - walk.total)
    if data is None:
        return
    digest = hashlib.sha256(data).hexdigest()
    if walk.inputs.get(rel) == digest:
        return
    walk.total += len(data)
    walk.collected.append(CollectedOutput(OutputFile(path=rel, size=len(data), sha256=digest),
                                          data))


def _read(name: str, dir_fd: int, walk: _Walk, room: int) -> bytes | None:
    """The file's bytes if it is a regular, singly linked file of the job's device
    within ``room`` bytes; None otherwise (a cap sets ``truncated``)."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_dev != walk.device or info.st_nlink != 1:
            return None
        limit = min(walk.limits.file_bytes, room)
        data = fh.read(limit + 1)
    if len(data) > limit:
        walk.truncated = True
        return None
    return data


def collect_outputs(root: Path, patterns: list[str], limits: CollectLimits | None = None,
                    inputs: dict[str, str] | None = None) -> tuple[list[CollectedOutput], bool]:
    """Files under ``root`` matching ``patterns``; True as second value if a cap cut some.

    ``inputs`` maps the job's own files to their sha256: an input the job left
    unchanged is not an output. At most ``limits.depth`` directories are open at once."""
    limits = limits or CollectLimits()
    root_fd = os.open(root, DIR_FLAGS)
    walk = _Walk(limits, patterns, inputs or {}, os.fstat(root_fd).st_dev)
    stack = [_frame(root_fd, "")]
    try:
        while stack:
            name = next(stack[-1].names, None)
            if name is None:
                os.close(stack.pop().fd)
                continue
            walk.visited += 1
            if walk.visited > limits.entries:
                walk.truncated = True
                break
            child = _visit(walk, stack[-1], name, len(stack))
            if child is not None:
                stack.append(child)
    finally:
        for frame in stack:
            os.close(frame.fd)
    walk.collected.sort(key=lambda item: item.info.path)
    return walk.collected, walk.truncated


def _clear(fd: int, name: str) -> int | None:
    """Unlink ``name`` in ``fd``; for a directory return its fd to empty first."""
    try:
        os.unlink(name, dir_fd=fd)
        return None
    except IsADirectoryError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            return None
    with contextlib.suppress(OSError):
        os.chmod(name, stat.S_IRWXU, dir_fd=fd)  # a job may have made it unreadable
    try:
        return os.open(name, DIR_FLAGS, dir_fd=fd)
    except OSError:
        return None


def remove_tree(root: Path) -> bool:
    """Delete ``root`` and everything in it, depth-first without recursion, never
    following a link and never raising; True when it is gone."""
    try:
        stack = [_frame(os.open(root, DIR_FLAGS), "")]
    except FileNotFoundError:
        return True
    except OSError:
        return False
    while stack:
        name = next(stack[-1].names, None)
        if name is None:
            done = stack.pop()
            os.close(done.fd)
            if stack:
                with contextlib.suppress(OSError):
                    os.rmdir(done.name, dir_fd=stack[-1].fd)
            continue
        child = _clear(stack[-1].fd, name)
        if child is not None:
            stack.append(_frame(child, "", name))
    with contextlib.suppress(OSError):
        os.rmdir(root)
    return not os.path.lexists(root)
