"""The dead-letter store: jobs that will not be tried again, kept for a person to look at.

A dead letter holds the job (or the task name and arguments of a user task),
why it died, its whole attempt history and its context (correlation id, tenant,
baggage). Letters expire after a TTL (seven days by default,
``SANDRUN_DEAD_LETTER_TTL``). Redis keeps them under ``sandrun:dead:<id>`` with an
index sorted by time; the embedded ``file://`` mode keeps one JSON file each.
``sandrun dead list|show|replay`` reads them.
"""

from __future__ import annotations

import hashlib
import re
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, Field

from worker.broker.urls import redis_client
from worker.collector import MetricsCollector
from worker.errors import ConfigurationError
from worker.models import JobContext, current_job_context
from worker.settings import DEAD_LETTER_TTL_SECONDS

DEAD_TTL_SECONDS = DEAD_LETTER_TTL_SECONDS
INDEX_KEY = "sandrun:dead"
#: Letter ids used as file names as they are; any other id is stored under its digest.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class DeadLetter(BaseModel):
    """One job that will not run again unless someone replays it."""

    id: str
    task: str
    reason: str
    source: str = Field(description="what dead-lettered it: retry, auth, broker, ...")
    job: dict[str, Any] | None = None
    task_args: list[Any] = Field(default_factory=list)
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    dead_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    raw: str | None = Field(default=None, description="start of an undecodable message")
    content_type: str | None = None
    context: JobContext | None = Field(default=None, description=(
        "the correlation id, tenant and baggage of the job (the one being worked on when "
        "the letter was added, unless given)"))


class DeadLetterStore(ABC):
    """Where dead letters are kept; counts each one in ``sandrun_dead_letter_total``."""

    def __init__(self, metrics: MetricsCollector | None = None) -> None:
        self.metrics = metrics

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (replacing an older letter of the same id), with the context of
        the job being worked on when it has none of its own."""
        if letter.context is None:
            current = current_job_context()
            if current is not None:
                letter = letter.model_copy(update={"context": current})
        self._put(letter)
        if self.metrics is not None:
            self.metrics.counter("sandrun_dead_letter_total", "Jobs dead-lettered",
                                 ("source",)).labels(source=letter.source).inc()

    @abstractmethod
    def _put(self, letter: DeadLetter) -> None: ...

    @abstractmethod
    def get(self, letter_id: str) -> DeadLetter | None:
        """The letter, or None if unknown or expired."""

    @abstractmethod
    def list(self, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""

    @abstractmethod
    def remove(self, letter_id: str, *, only: DeadLetter | None = None) -> bool:
        """Forget a letter (after a replay); True if it existed. With ``only``, only if
        the stored letter is still that one: a replayed job that died again meanwhile
        left a new letter under the same id, which must be kept."""


#: KEYS: the letter, the index; ARGV: its id, the dead_at it must still have ("" = any).
_REMOVE = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[2] ~= '' then
  local ok, letter = pcall(cjson.decode, raw)
  if not ok or type(letter) ~= 'table' or letter['dead_at'] ~= ARGV[2] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class RedisDeadLetterStore(DeadLetterStore):
    """Letters in Redis, shared by the fleet."""

    def __init__(self, client: redis.Redis[bytes], ttl: int = DEAD_TTL_SECONDS,
                 metrics: MetricsCollector | None = None) -> None:
        super().__init__(metrics)
        self.client, self.ttl = client, ttl
        self._remove = client.register_script(_REMOVE)

    def _put(self, letter: DeadLetter) -> None:
        pipe = self.client.pipeline()
        pipe.set(f"{INDEX_KEY}:{letter.id}", letter.model_dump_json(), ex=self.ttl)
        pipe.zadd(INDEX_KEY, {letter.id: letter.dead_at.timestamp()})
        pipe.zremrangebyscore(INDEX_KEY, 0, time.time() - self.ttl)
        pipe.execute()

    def get(self, letter_id: str) -> DeadLetter | None:
        raw = self.client.get(f"{INDEX_KEY}:{letter_id}")
        return None if raw is None else DeadLetter.model_validate_json(raw)

    def list(self, limit: int = 100) -> list[DeadLetter]:
        ids = [i.decode() for i in self.client.zrevrange(INDEX_KEY, 0, limit - 1)]
        letters = [self.get(i) for i in ids]
        return [letter for letter in letters if letter is not None]

    def remove(self, letter_id: str, *, only: DeadLetter | None = None) -> bool:
        dead_at = "" if only is None else only.model_dump(mode="json")["dead_at"]
        return bool(self._remove(keys=[f"{INDEX_KEY}:{letter_id}", INDEX_KEY],
                                 args=[letter_id, dead_at]))


class FileDeadLetterStore(DeadLetterStore):
    """Letters as JSON files in a directory (the embedded ``file://`` mode)."""

    def __init__(self, root: Path, ttl: int = DEAD_TTL_SECONDS,
                 metrics: MetricsCollector | None = None) -> None:
        super().__init__(metrics)
        self.root, self.ttl = root, ttl
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, letter_id: str) -> Path:
        """The letter's file: its id as the name when that is a plain identifier, else a
        digest of it (ids come from messages, and a path must not)."""
        if not _PLAIN.fullmatch(letter_id):
            letter_id = "id-" + hashlib.sha256(letter_id.encode()).hexdigest()
        return self.root / f"{letter_id}.json"

    def _put(self, letter: DeadLetter) -> None:
        tmp = self._path(letter.id).with_suffix(".tmp")
        tmp.write_text(letter.model_dump_json())
        tmp.replace(self._path(letter.id))

    def get(self, letter_id: str) -> DeadLetter | None:
        path = self._path(letter_id)
        if not path.is_file() or path.stat().st_mtime < time.time() - self.ttl:
            return None
        return DeadLetter.model_validate_json(path.read_text())

    def list(self, limit: int = 100) -> list[DeadLetter]:
        paths = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        letters = [self.get(p.stem) for p in paths[:limit]]
        return [letter for letter in letters if letter is not None]

    def remove(self, letter_id: str, *, only: DeadLetter | None = None) -> bool:
        path = self._path(letter_id)
        if only is not None:
            stored = self.get(letter_id)
            if stored is None or stored.dead_at != only.dead_at:
                return False
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed


def dead_letter_store_for(result_backend: str, metrics: MetricsCollector | None = None,
                          ttl: int = DEAD_TTL_SECONDS) -> DeadLetterStore:
    """The store that fits a result backend URL: Redis, or ``file://`` directories;
    letters are kept ``ttl`` seconds (``SANDRUN_DEAD_LETTER_TTL``)."""
    if result_backend.startswith("file://"):
        return FileDeadLetterStore(Path(result_backend.removeprefix("file://")) / "dead",
                                   ttl=ttl, metrics=metrics)
    client = redis_client(result_backend)
    if client is None:
        raise ConfigurationError(
            f"dead letters are kept in Redis or under file://, and the result backend is "
            f"{result_backend!r}; set SANDRUN_RESULT_BACKEND to a redis:// URL")
    return RedisDeadLetterStore(client, ttl=ttl, metrics=metrics)
