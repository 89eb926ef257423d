"""The main process's lease keeper, its clock injected, on a real (private) Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.node.leasekeeper import KILL_SECONDS, STEP_SECONDS, Keeper, Running
from worker.stores.leases import Leases


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def unreachable(tmp_path: Path) -> redis.Redis:
    """A client of a Redis that is not there: every call fails at once."""
    return redis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"),
                       retry=Retry(NoBackoff(), 0))


def job(task_id: str, pid: int, accepted: float) -> Running:
    return Running(task_id, f"w@h:{pid}", pid, accepted)


def test_the_margin_is_two_bounded_calls_a_step_and_the_time_to_kill(
        redis_client: redis.Redis, clock: Clock) -> None:
    keeper = Keeper(Leases(redis_client, 60), redis_client, call_timeout=5, clock=clock)
    assert keeper.interval == 20
    assert keeper.fence_after == 60 - (2 * 5 + STEP_SECONDS + KILL_SECONDS)


def test_running_jobs_leases_are_renewed_every_third_of_the_ttl(
        redis_client: redis.Redis, clock: Clock) -> None:
    leases = Leases(redis_client, 30)
    keeper = Keeper(leases, redis_client, call_timeout=2.5, clock=clock)
    redis_client.set("sandrun:lease:j1", "w@h:11", px=30_000)
    assert keeper.step([job("j1", 11, clock.now)]) == []
    redis_client.pexpire("sandrun:lease:j1", 5000)
    clock.now += 9  # not due yet: nothing sent
    keeper.step([job("j1", 11, clock.now - 9)])
    assert redis_client.pttl("sandrun:lease:j1") <= 5000
    clock.now += 1.5
    keeper.step([job("j1", 11, clock.now - 10.5)])
    assert redis_client.pttl("sandrun:lease:j1") > 29_000
    for _ in range(30):  # renewed all along: never fenced
        clock.now += STEP_SECONDS
        assert keeper.step([job("j1", 11, 1000.0)]) == []


def test_a_job_that_ended_without_releasing_has_its_lease_released_at_once(
        redis_client: redis.Redis, clock: Clock) -> None:
    keeper = Keeper(Leases(redis_client, 30), redis_client, call_timeout=2.5, clock=clock)
    redis_client.set("sandrun:lease:j2", "w@h:12", px=30_000)
    keeper.step([job("j2", 12, clock.now)])
    clock.now += STEP_SECONDS
    keeper.step([])  # its pool process died: Celery's request is gone
    assert redis_client.get("sandrun:lease:j2") is None


def test_a_job_whose_lease_cannot_be_renewed_is_fenced_once_before_the_lease_lapses(
        tmp_path: Path, clock: Clock) -> None:
    keeper = Keeper(Leases(unreachable(tmp_path), 30), unreachable(tmp_path),
                    call_timeout=2.5, clock=clock)
    accepted = clock.now
    fenced_at = None
    while clock.now - accepted < 30:
        fenced = keeper.step([job("j3", 13, accepted)])
        if fenced:
            assert fenced_at is None, "fenced twice"
            assert [f.task_id for f in fenced] == ["j3"]
            fenced_at = clock.now - accepted
        clock.now += STEP_SECONDS
    assert fenced_at is not None
    assert keeper.fence_after <= fenced_at < 30 - KILL_SECONDS


def test_renewals_that_succeed_again_before_the_fence_keep_the_job(
        redis_client: redis.Redis, tmp_path: Path, clock: Clock) -> None:
    keeper = Keeper(Leases(redis_client, 30), unreachable(tmp_path), call_timeout=2.5,
                    clock=clock)
    redis_client.set("sandrun:lease:j4", "w@h:14", px=30_000)
    for _ in range(15):  # 15 s cut off: less than fence_after (23 s)
        assert keeper.step([job("j4", 14, 1000.0)]) == []
        clock.now += STEP_SECONDS
    keeper.client = redis_client  # the link is back
    for _ in range(60):
        assert keeper.step([job("j4", 14, 1000.0)]) == []
        clock.now += STEP_SECONDS
    assert redis_client.pttl("sandrun:lease:j4") > 20_000
