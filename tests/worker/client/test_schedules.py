"""Periodic schedules against a private Redis: cron due times, the checks made when a
schedule is added, the store, and two runners submitting each due run once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import redis

from worker.client.schedules import Schedule, ScheduleRunner, ScheduleStore, schedule_from
from worker.errors import BrokerUnavailable, ConfigurationError, InvalidJob, SandrunError
from worker.models import Job

T0 = 1_900_000_000.0  # not a round minute; MINUTE is one
MINUTE = 60 * (int(T0) // 60)


class Recorder:
    """Stands in for the client's submit (the integration test submits for real)."""

    def __init__(self, fail: bool = False) -> None:
        self.jobs: list[Job] = []
        self.fail = fail
        self.lock = threading.Lock()

    def submit(self, job: Job) -> None:
        if self.fail:
            raise BrokerUnavailable("broker down")
        with self.lock:
            self.jobs.append(job)


def runner(client: redis.Redis, recorder: Recorder, grace: float = 60) -> ScheduleRunner:
    return ScheduleRunner(recorder, ScheduleStore(client), grace)  # type: ignore[arg-type]


def test_due_times_are_the_cron_times_in_the_window_after_creation() -> None:
    every5 = Schedule(name="s", cron="*/5 * * * *", job={"code": "1"}, created_at=0)
    assert every5.due_times(MINUTE - 1, MINUTE + 600) == [
        float(MINUTE + 60 * m) for m in range(11) if (MINUTE // 60 + m) % 5 == 0]
    secondly = Schedule(name="s", cron="* * * * * */2", job={"code": "1"}, created_at=T0)
    assert secondly.due_times(T0 - 100, T0 + 5) == [T0 + 2, T0 + 4]  # none before creation
    assert Schedule(name="s", cron="@hourly", job={"code": "1"}, created_at=0).due_times(
        3600.0, 3600.0 * 3) == [7200.0, 10800.0]


def test_a_flood_of_missed_runs_is_cut_to_the_latest() -> None:
    secondly = Schedule(name="s", cron="* * * * * *", job={"code": "1"}, created_at=0)
    times = secondly.due_times(T0 - 1000, T0)
    assert len(times) == 100 and times[-1] == T0 and times[0] == T0 - 99


def test_a_run_is_the_job_with_its_own_id_and_deadline() -> None:
    made = schedule_from("nightly", "0 3 * * *", Job(code="print(1)", timeout=5),
                         expires_in=30)
    job = made.run(T0)
    assert job.id == f"nightly-{int(T0)}" and job.code == "print(1)" and job.timeout == 5
    assert job.deadline == datetime.fromtimestamp(T0 + 30, UTC)


@pytest.mark.parametrize(("name", "cron", "job", "match"), [
    ("ok", "every day", {"code": "1"}, "not a cron expression"),
    ("ok", "61 * * * *", {"code": "1"}, "not a cron expression"),
    ("bad name!", "* * * * *", {"code": "1"}, "name"),
    ("x" * 41, "* * * * *", {"code": "1"}, "name"),
    ("ok", "* * * * *", {"code": "1", "deadline": "2031-01-01T00:00:00Z"}, "expires_in"),
    ("ok", "* * * * *", {"code": "1", "scheduled_time": "2031-01-01T00:00:00Z"},
     "cron times"),
    ("ok", "* * * * *", {"timeout": 1}, "exactly one of 'code'"),
])
def test_a_bad_schedule_is_refused_when_added(name: str, cron: str, job: dict[str, object],
                                              match: str) -> None:
    with pytest.raises(InvalidJob, match=match):
        schedule_from(name, cron, job)


def test_the_store_adds_lists_refuses_a_duplicate_and_removes(
        redis_client: redis.Redis) -> None:
    store = ScheduleStore(redis_client)
    store.add(schedule_from("b", "* * * * *", Job(code="2")))
    store.add(schedule_from("a", "@daily", Job(code="1")))
    with pytest.raises(SandrunError, match="already exists; remove it first or pass --replace"):
        store.add(schedule_from("a", "@hourly", Job(code="1")))
    store.add(schedule_from("a", "@hourly", Job(code="1")), replace=True)
    assert [(s.name, s.cron) for s in store.list()] == [("a", "@hourly"), ("b", "* * * * *")]
    assert store.remove("a") and not store.remove("a")
    assert [s.name for s in store.list()] == ["b"]


def test_only_redis_holds_schedules() -> None:
    with pytest.raises(ConfigurationError, match="kept in Redis"):
        ScheduleStore.for_urls("filesystem://", "file:///tmp/results")
    assert ScheduleStore.for_urls("amqp://h", "redis://h:6379/0") is not None


def test_two_runners_ticking_together_submit_each_due_run_once(
        redis_client: redis.Redis) -> None:
    ScheduleStore(redis_client).add(Schedule(name="s", cron="* * * * * *",
                                             job={"code": "1"}, created_at=T0))
    recorder = Recorder()
    beats = [runner(redis_client, recorder), runner(redis_client, recorder)]
    for second in range(1, 21):
        now = T0 + second + 0.5
        threads = [threading.Thread(target=b.tick, args=(now,)) for b in beats]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ids = [job.id for job in recorder.jobs]
    assert sorted(ids) == [f"s-{int(T0) + s}" for s in range(1, 21)]


def test_a_run_that_could_not_be_submitted_is_given_back_for_a_later_tick(
        redis_client: redis.Redis) -> None:
    ScheduleStore(redis_client).add(Schedule(name="s", cron="* * * * *", job={"code": "1"},
                                             created_at=MINUTE - 1))
    down, up = Recorder(fail=True), Recorder()
    assert runner(redis_client, down).tick(MINUTE + 1) == 0
    assert runner(redis_client, up).tick(MINUTE + 2) == 1
    assert runner(redis_client, up).tick(MINUTE + 3) == 0
    assert [job.id for job in up.jobs] == [f"s-{MINUTE}"]


def test_runs_later_than_the_grace_are_skipped_and_expired_ones_not_sent(
        redis_client: redis.Redis) -> None:
    ScheduleStore(redis_client).add(Schedule(name="s", cron="* * * * *", job={"code": "1"},
                                             created_at=0, expires_in=5))
    recorder = Recorder()
    # due at MINUTE, 30 s late: within the grace, but past its 5 s expiry
    assert runner(redis_client, recorder, grace=60).tick(MINUTE + 30) == 0
    assert runner(redis_client, recorder, grace=10).tick(MINUTE + 60 + 11) == 0  # too late
    assert recorder.jobs == []
