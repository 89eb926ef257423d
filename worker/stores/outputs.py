"""Output files kept for download after a job ends.

The sandbox collects files (:mod:`worker.sandbox.collect`) as
:class:`CollectedOutput`; they go to an :class:`OutputStore` keyed by job id:
Redis (with a TTL) when the result backend is Redis, a directory when it is
``file://``, else this process's memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import redis

from worker.broker.urls import redis_client
from worker.models import OutputFile, check_relative_path
from worker.settings import OUTPUT_TTL_SECONDS


@dataclass(frozen=True, slots=True)
class CollectedOutput:
    """One collected file: its description and its bytes."""

    info: OutputFile
    data: bytes


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


def output_store_for(result_backend: str, ttl: int = OUTPUT_TTL_SECONDS) -> OutputStore:
    """The store that fits a result backend URL (Redis, ``file://``, else this process);
    in Redis, outputs expire ``ttl`` seconds after they are stored (``SANDRUN_OUTPUT_TTL``)."""
    if result_backend.startswith("file://"):
        return FileOutputStore(Path(result_backend.removeprefix("file://")) / "outputs")
    client = redis_client(result_backend)
    if client is not None:
        return RedisOutputStore(client, ttl)
    return MemoryOutputStore()
