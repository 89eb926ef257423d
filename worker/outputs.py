"""Output files: collecting them from a finished job and keeping them for download.

Collection follows the job's glob patterns (``"results/"`` takes a whole
directory, ``"*.png"`` the matching files), takes regular files only (a
symlink the job planted, say to ``/etc/passwd``, is never followed), and stops
at per-file and total size caps. Collected files go to an :class:`OutputStore`
keyed by job id: Redis (with a TTL) when the result backend is Redis, a
directory when it is ``file://``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import redis

from worker.models import OutputFile, check_relative_path

OUTPUT_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class CollectedOutput:
    """One collected file: its description and its bytes."""

    info: OutputFile
    data: bytes


def _walk(root: Path, start: Path) -> list[Path]:
    if start.is_symlink():
        return []
    if start.is_file():
        return [start]
    found = []
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath) / name for name in sorted(filenames)]
    return found


def collect_outputs(root: Path, patterns: list[str], file_cap: int, total_cap: int,
                    inputs: dict[str, str] | None = None) -> tuple[list[CollectedOutput], bool]:
    """Files under ``root`` matching ``patterns``; True as second value if a cap cut some.

    ``inputs`` maps the job's own files to their sha256: an input the job left
    unchanged is not an output.
    """
    inputs = inputs or {}
    seen: dict[str, Path] = {}
    for pattern in patterns:
        for match in sorted(root.glob(pattern.rstrip("/") or "*")):
            for path in _walk(root, match):
                rel = path.relative_to(root).as_posix()
                if not rel.startswith("__sandrun_main__"):
                    seen.setdefault(rel, path)
    collected: list[CollectedOutput] = []
    total, truncated = 0, False
    for rel, path in sorted(seen.items()):
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            continue
        if info.st_size > file_cap or total + info.st_size > total_cap:
            truncated = True
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if inputs.get(rel) == digest:
            continue
        total += len(data)
        collected.append(CollectedOutput(OutputFile(path=rel, size=len(data), sha256=digest),
                                         data))
    return collected, truncated


class OutputStore(ABC):
    """Where collected outputs wait for ``JobExecution.download``."""

    @abstractmethod
    def put(self, job_id: str, outputs: list[CollectedOutput]) -> None:
        """Keep the outputs of ``job_id``."""

    @abstractmethod
    def get(self, job_id: str, path: str) -> bytes | None:
        """One output's bytes, or None if it is unknown or expired."""


class RedisOutputStore(OutputStore):
    """Outputs in Redis under ``sandrun:output:<job>``, expiring after a TTL."""

    def __init__(self, client: redis.Redis[bytes], ttl: int = OUTPUT_TTL_SECONDS) -> None:
        self.client, self.ttl = client, ttl

    def put(self, job_id: str, outputs: list[CollectedOutput]) -> None:
        if not outputs:
            return
        key = f"sandrun:output:{job_id}"
        pipe = self.client.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping={o.info.path: o.data for o in outputs})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def get(self, job_id: str, path: str) -> bytes | None:
        return self.client.hget(f"sandrun:output:{job_id}", path)


class FileOutputStore(OutputStore):
    """Outputs in a directory per job (the embedded ``file://`` mode)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, job_id: str, outputs: list[CollectedOutput]) -> None:
        for output in outputs:
            target = self.root / job_id / check_relative_path(output.info.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(output.data)

    def get(self, job_id: str, path: str) -> bytes | None:
        target = self.root / job_id / check_relative_path(path)
        return target.read_bytes() if target.is_file() else None


class MemoryOutputStore(OutputStore):
    """Outputs kept in this process only (result backends that are neither Redis nor files)."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], bytes] = {}

    def put(self, job_id: str, outputs: list[CollectedOutput]) -> None:
        for output in outputs:
            self._data[(job_id, output.info.path)] = output.data

    def get(self, job_id: str, path: str) -> bytes | None:
        return self._data.get((job_id, path))


def output_store_for(result_backend: str) -> OutputStore:
    """The store that fits a result backend URL (Redis, ``file://``, else this process)."""
    if result_backend.startswith("file://"):
        return FileOutputStore(Path(result_backend.removeprefix("file://")) / "outputs")
    if result_backend.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        return RedisOutputStore(redis.Redis.from_url(
            result_backend.replace("redis+socket://", "unix://", 1)))
    return MemoryOutputStore()
