"""Following a job's live stream on a real Redis: lines as they arrive, across chunk
boundaries, until the job has a result."""

from __future__ import annotations

import itertools

import pytest
import redis

from worker.client.follow import MAX_LINE_CHARS, LogLine, follow
from worker.errors import BrokerUnavailable, WaitTimeout
from worker.models import JobResult
from worker.stores.livelogs import LiveLog, live_key

DONE = JobResult(id="j1", status="completed", stdout="from result\n", stderr="err\n")


def test_lines_are_yielded_as_their_newline_arrives(redis_client: redis.Redis) -> None:
    live = LiveLog(redis_client)
    live.append("j1", [("out", b"one\ntw")])
    result: list[JobResult | None] = [None]
    lines = follow(live, "j1", lambda: result[0])
    assert next(lines) == LogLine("stdout", "one\n")
    live.append("j1", [("out", b"o\n"), ("err", b"\xc3"), ("note", b"a note")])
    assert next(lines) == LogLine("stdout", "two\n")
    assert next(lines) == LogLine("sandrun", "a note\n")
    live.append("j1", [("err", b"\xa9 accent\n"), ("out", b"no newline")])  # é split in two
    live.end("j1")
    assert next(lines) == LogLine("stderr", "\u00e9 accent\n")
    result[0] = DONE  # stored after every entry of the attempt
    assert list(lines) == [LogLine("stdout", "no newline")]


def test_the_follow_ends_only_once_there_is_a_result(redis_client: redis.Redis) -> None:
    live = LiveLog(redis_client)
    live.append("j1", [("out", b"first\n")])
    live.end("j1")  # an attempt ended; the job may be retried
    looks = itertools.count()

    def result_of() -> JobResult | None:
        if next(looks) == 0:
            live.append("j1", [("out", b"retry\n")])
            return None
        return DONE

    assert [line.text for line in follow(live, "j1", result_of)] == ["first\n", "retry\n"]


def test_a_job_without_a_stream_yields_its_results_output(redis_client: redis.Redis) -> None:
    lines = list(follow(LiveLog(redis_client), "gone", lambda: DONE))
    assert lines == [LogLine("stdout", "from result\n"), LogLine("stderr", "err\n")]


def test_a_line_without_end_is_yielded_in_bounded_pieces(redis_client: redis.Redis) -> None:
    live = LiveLog(redis_client)
    live.append("j1", [("out", b"x" * (16 << 10))] * 9)
    lines = list(follow(live, "j1", lambda: DONE))
    assert all(len(line.text) <= MAX_LINE_CHARS for line in lines)
    assert "".join(line.text for line in lines) == "x" * (9 * (16 << 10))


def test_giving_up_after_the_timeout(redis_client: redis.Redis) -> None:
    ticks = iter(range(0, 1000, 10))
    lines = follow(LiveLog(redis_client), "never", lambda: None, timeout=15,
                   clock=lambda: float(next(ticks)))
    with pytest.raises(WaitTimeout, match="did not finish within 15"):
        list(lines)


def test_the_stream_is_bounded_and_expires(redis_client: redis.Redis) -> None:
    live = LiveLog(redis_client, max_entries=10, ttl=60)
    for _ in range(50):
        live.append("j1", [("out", b"x" * 100)] * 10)
    assert redis_client.xlen(live_key("j1")) <= 10 + 100  # MAXLEN ~: whole nodes trimmed
    assert 0 < redis_client.ttl(live_key("j1")) <= 60


def test_an_unreachable_redis_is_a_broker_error(tmp_path: object) -> None:
    client = redis.Redis.from_url("unix:///nonexistent/redis.sock")
    with pytest.raises(BrokerUnavailable, match="live output of job j1"):
        next(follow(LiveLog(client), "j1", lambda: None))
