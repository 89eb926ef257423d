"""The node's live sink on a real Redis: output reaches the job's stream in order and
before its end marker, progress becomes the task's PROGRESS state, and a Redis that
fails costs the job nothing and the log no output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import structlog
from celery import Celery

from tests.conftest import RedisServer
from worker.broker.factory import make_app
from worker.models import Progress
from worker.node.livefeed import WITH_RESULT_BYTES, WITH_RESULT_ENTRIES, WRITE_SECONDS, JobFeed
from worker.node.resultwrites import store_left
from worker.sandbox.arena import lease
from worker.sandbox.live import FLUSH_BYTES
from worker.stores.livelogs import LiveLog, live_key


@pytest.fixture
def app(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Celery]:
    url = f"redis+socket://{redis_server.socket}"
    made = make_app(url, url)  # the guarded result backend workers store states with
    made.conf.worker_send_task_events = False
    yield made
    made.close()


def entries(client: redis.Redis, job_id: str) -> list[tuple[bytes, bytes]]:
    return [(fields[b"k"], fields[b"d"]) for _, fields in client.xrange(live_key(job_id))]


def test_output_goes_in_order_and_the_end_marker_last(redis_client: redis.Redis) -> None:
    feed = JobFeed(LiveLog(redis_client), "j1", None, None)
    for i in range(50):
        feed.output([("out", f"line {i}\n".encode()), ("err", b"e")])
    feed.end()
    seen = entries(redis_client, "j1")
    assert seen[-1] == (b"end", b"")
    assert seen[:-1] == [pair for i in range(50)
                         for pair in ((b"out", f"line {i}\n".encode()), (b"err", b"e"))]
    assert 0 < redis_client.ttl(live_key("j1")) <= 3600


def test_progress_is_the_tasks_progress_state(app: Celery, redis_client: redis.Redis) -> None:
    def noop() -> None:
        """A task to store a state for."""

    task: Any = app.task(name="t")(noop)
    feed = JobFeed(LiveLog(redis_client), "j2", task, "j2")
    feed.progress(Progress(percent=40, done=4, total=10, message="training"))
    meta = app.backend.get_task_meta("j2")
    assert meta["status"] == "PROGRESS"
    assert Progress.model_validate(meta["result"]).describe() == "40% (step 4/10: 'training')"


def test_a_failing_redis_is_logged_once_without_the_output() -> None:
    dead = redis.Redis.from_url("unix:///nonexistent/redis.sock")
    feed = JobFeed(LiveLog(dead), "j3", None, None)
    with structlog.testing.capture_logs() as logs:
        feed.output([("out", b"SECRET-OUTPUT")])
        feed.output([("out", b"SECRET-OUTPUT")])
        feed.end()
    assert [entry["event"] for entry in logs] == ["live_output_dropped"]
    assert "SECRET-OUTPUT" not in repr(logs)


def test_the_arena_is_recycled_once_written_and_dropped_when_redis_fails(
        redis_client: redis.Redis) -> None:
    feed = JobFeed(LiveLog(redis_client), "j4", None, None)
    arena = feed.arena()
    feed.output([("out", b"x")])
    feed.end()
    assert lease() is arena  # the next job of this process reads into it again
    arena.recycle()
    dead = JobFeed(LiveLog(redis.Redis.from_url("unix:///nonexistent/redis.sock")), "j5",
                   None, None)
    held = dead.arena()
    assert held is arena
    dead.output([("out", b"x")])
    dead.end()  # not written: a writer may still hold views of it
    assert lease() is not held


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_held_until_the_job_pauses_then_written_in_order(
        redis_client: redis.Redis) -> None:
    clock = Clock()
    feed = JobFeed(LiveLog(redis_client), "j6", None, None, clock)
    burst = [("out", b"a" * (FLUSH_BYTES // 2)), ("out", b"b" * (FLUSH_BYTES // 2))]
    feed.output(burst)
    clock.now += WRITE_SECONDS / 2
    feed.output(burst)
    assert feed._writer is None and entries(redis_client, "j6") == []  # printing fast
    feed.output([])  # the tee: the job paused
    assert feed._writer is not None
    feed.output([("err", b"late")])
    feed.end()
    assert entries(redis_client, "j6") == [
        (b"out", b"a" * (FLUSH_BYTES // 2)), (b"out", b"b" * (FLUSH_BYTES // 2))] * 2 + [
        (b"err", b"late"), (b"end", b"")]


def test_a_burst_that_ends_with_the_job_is_written_at_the_end_in_one_go(
        redis_client: redis.Redis) -> None:
    clock = Clock()
    feed = JobFeed(LiveLog(redis_client), "j7", None, None, clock)
    feed.output([("out", b"x" * FLUSH_BYTES)])
    feed.end()
    assert entries(redis_client, "j7") == [(b"out", b"x" * FLUSH_BYTES), (b"end", b"")]
    feed = JobFeed(LiveLog(redis_client), "j8", None, None, clock)
    feed.output([("out", b"x" * FLUSH_BYTES)])
    clock.now += WRITE_SECONDS
    feed.output([("out", b"y" * FLUSH_BYTES)])  # printing fast for long enough: written
    assert feed._writer is not None
    feed.end()
    assert [kind for kind, _ in entries(redis_client, "j8")] == [b"out", b"out", b"end"]


def test_the_last_output_of_a_short_job_goes_with_the_end_in_one_round_trip(
        redis_client: redis.Redis) -> None:
    feed = JobFeed(LiveLog(redis_client), "j9", None, None)
    feed.output([("out", b"1\n")], last=True)  # the tee's close: the job has ended
    assert feed._writer is None and entries(redis_client, "j9") == []  # no thread
    before = redis_client.info("stats")["total_reads_processed"]
    feed.end()
    assert redis_client.info("stats")["total_reads_processed"] - before == 2  # + INFO
    assert entries(redis_client, "j9") == [(b"out", b"1\n"), (b"end", b"")]


def test_a_started_writer_writes_the_last_output_and_the_end_together(
        redis_client: redis.Redis) -> None:
    feed = JobFeed(LiveLog(redis_client), "j10", None, None)
    feed.output([("out", b"first\n")])  # printed while running: the writer starts
    assert feed._writer is not None
    feed.output([("err", b"last\n")], last=True)
    feed.end()
    assert entries(redis_client, "j10") == [(b"out", b"first\n"), (b"err", b"last\n"),
                                            (b"end", b"")]


def test_a_short_jobs_last_output_and_end_ride_in_the_script_that_stores_its_result(
        app: Celery, redis_client: redis.Redis) -> None:
    def noop() -> None:
        """A task whose result our store keeps."""

    task: Any = app.task(name="short")(noop)
    task.push_request(id="j11")
    try:
        feed = JobFeed(LiveLog(redis_client), "j11", task, "j11")
        feed.output([("out", b"1\n")], last=True)
        feed.end()
        assert entries(redis_client, "j11") == []  # nothing before the result
        app.backend.store_result("j11", "done", "SUCCESS", request=task.request)
        assert entries(redis_client, "j11") == [(b"out", b"1\n"), (b"end", b"")]
        big = JobFeed(LiveLog(redis_client), "j12", task, "j12")
        big.output([("out", b"z" * (WITH_RESULT_BYTES + 1))], last=True)
        big.end()  # too much to pass as the script's arguments: written now
        assert [kind for kind, _ in entries(redis_client, "j12")] == [b"out", b"end"]
        switching = JobFeed(LiveLog(redis_client), "j14", task, "j14")
        switching.output([("out" if i % 2 else "err", b"x") for i in range(WITH_RESULT_ENTRIES)],
                         last=True)  # a byte to each stream in turn: an entry each
        switching.end()  # too many entries for the script: written now
        assert len(entries(redis_client, "j14")) == WITH_RESULT_ENTRIES + 1
        left = JobFeed(LiveLog(redis_client), "j13", task, "j13")
        left.end()  # then the delivery ends in a retry: no result stores it
        store_left(task)
        assert entries(redis_client, "j13") == [(b"end", b"")]
    finally:
        task.pop_request()
