"""The dead-letter stores: a replay removes the letter it replayed, never a newer one; a
letter id from a message never becomes a path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from worker.stores.deadletter import (
    DeadLetter,
    DeadLetterStore,
    FileDeadLetterStore,
    dead_letter_store_for,
)


def letter(letter_id: str, seconds_ago: float) -> DeadLetter:
    return DeadLetter(id=letter_id, task="t", reason="r", source="test",
                      dead_at=datetime.now(UTC) - timedelta(seconds=seconds_ago))


@pytest.fixture(params=["redis", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> DeadLetterStore:
    if request.param == "file":
        return FileDeadLetterStore(tmp_path / "dead")
    server: RedisServer = request.getfixturevalue("redis_server")
    return dead_letter_store_for(f"redis+socket://{server.socket}")


def test_a_replay_keeps_the_letter_the_replayed_job_left_meanwhile(
        store: DeadLetterStore) -> None:
    old = letter("job-1", 60)
    store.add(old)
    store.add(letter("job-1", 0))  # the replayed job died again before the replay ended
    assert store.remove("job-1", only=old) is False
    kept = store.get("job-1")
    assert kept is not None and kept.dead_at > old.dead_at
    assert [x.id for x in store.list()].count("job-1") == 1


def test_a_replay_removes_the_letter_it_replayed(store: DeadLetterStore) -> None:
    old = letter("job-2", 5)
    store.add(old)
    assert store.remove("job-2", only=old) is True
    assert store.get("job-2") is None and "job-2" not in [x.id for x in store.list()]
    assert store.remove("job-2") is False


def test_a_hostile_letter_id_stays_inside_the_store(tmp_path: Path) -> None:
    root = tmp_path / "dead"
    store = FileDeadLetterStore(root)
    hostile = "../../" + "x" * 300
    store.add(letter(hostile, 0))
    assert [p.parent for p in tmp_path.rglob("*.json")] == [root]
    got = store.get(hostile)
    assert got is not None and got.id == hostile
    assert [x.id for x in store.list()] == [hostile]
    assert store.remove(hostile) is True
    assert list(root.iterdir()) == []  # nothing is left behind
