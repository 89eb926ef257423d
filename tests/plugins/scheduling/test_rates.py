"""Rates of the scheduling plugin: parsing, the Redis token bucket with reservations,
and ``on_execute`` deferring a job over its rate (giving back its concurrency lease)."""

from __future__ import annotations

import pytest
import redis

from plugins.scheduling import scheduling_plugin
from plugins.scheduling.leases import PREFIX as LEASES
from plugins.scheduling.rates import Rate, RateLimiter, parse_rate
from tests.conftest import RedisServer
from worker import ExecutionContext, Job, PluginManager
from worker.errors import JobDeferred, PluginConfigError
from worker.models import Execution
from worker.protocol import RUN_JOB


@pytest.mark.parametrize(("text", "count", "period"), [
    ("100/m", 100, 60), ("5/s", 5, 1), ("10/5m", 10, 300), ("1/d", 1, 86400),
    (" 2 / h ", 2, 3600), ("0.5/s", 0.5, 1), ("3/1.5s", 3, 1.5),
])
def test_rates_are_starts_per_period(text: str, count: float, period: float) -> None:
    assert parse_rate(text) == Rate(count, period)


@pytest.mark.parametrize("text", ["", "100", "100/min", "0/s", "5/0s", "-1/s", "s/5",
                                  "5 per s", "5/s/s"])
def test_bad_rates_say_what_a_rate_looks_like(text: str) -> None:
    with pytest.raises(ValueError, match="such as '100/m'"):
        parse_rate(text)


def test_a_bad_rate_fails_when_the_plugin_loads_naming_the_option() -> None:
    with pytest.raises(PluginConfigError, match="rate"):
        PluginManager().load("scheduling", {"rate": "lots"})


def test_interval_spaces_starts_evenly() -> None:
    assert parse_rate("100/m").interval == pytest.approx(0.6)


def test_over_the_rate_a_job_reserves_the_next_start_and_keeps_it(
        redis_client: redis.Redis) -> None:
    limiter, rate = RateLimiter(redis_client), Rate(1, 1.0)
    assert limiter.take("q", "a", rate) == 0.0
    second = limiter.take("q", "b", rate)
    third = limiter.take("q", "c", rate)
    assert second == pytest.approx(1.0, abs=0.2) and third == pytest.approx(2.0, abs=0.2)
    # back early, b keeps its own slot: it is not pushed behind c
    assert limiter.take("q", "b", rate) == pytest.approx(1.0, abs=0.2)
    assert limiter.take("other", "d", rate) == 0.0  # each scope has its own bucket
    assert redis_client.zscore("sandrun:scheduling:rate:q:reserved", "b") is not None


def test_a_reservation_whose_time_has_come_runs_once(redis_client: redis.Redis) -> None:
    limiter, rate = RateLimiter(redis_client), Rate(20, 1.0)  # 50 ms apart
    assert limiter.take("q", "a", rate) == 0.0
    wait = limiter.take("q", "b", rate)
    assert wait > 0
    seconds, micros = redis_client.time()
    past = seconds + micros / 1e6 - 1  # its slot has passed (by the Redis clock)
    redis_client.zadd("sandrun:scheduling:rate:q:reserved", {"b": past})
    assert limiter.take("q", "b", rate) == 0.0
    assert redis_client.zscore("sandrun:scheduling:rate:q:reserved", "b") is None


def test_a_burst_lets_that_many_start_at_once(redis_client: redis.Redis) -> None:
    limiter, rate = RateLimiter(redis_client), Rate(1, 10.0)
    assert [limiter.take("q", str(i), rate, burst=3) for i in range(3)] == [0.0] * 3
    assert limiter.take("q", "3", rate, burst=3) == pytest.approx(10.0, abs=0.5)


def run(job: Job, queue: str = "sandrun") -> tuple[Execution, ExecutionContext]:
    return (Execution(task=RUN_JOB, task_id=job.id, job=job),
            ExecutionContext(node_id="n", pool_id="1", task_id=job.id, queue=queue))


def test_on_execute_defers_over_the_rate_per_label_and_gives_back_its_lease(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    plugin = scheduling_plugin(broker_url=f"redis+socket://{redis_server.socket}",
                               rate="1/m", rate_label="tenant", max_concurrent=5)
    first, second, other = (Job(code="1", labels={"tenant": t}) for t in ("a", "a", "b"))
    plugin.on_execute(*run(first))
    with pytest.raises(JobDeferred) as deferred:
        plugin.on_execute(*run(second))
    assert deferred.value.countdown == pytest.approx(60, abs=1)
    assert "label:tenant=a" in str(deferred.value)
    assert redis_client.zscore(LEASES + "queue:sandrun", second.id) is None
    assert redis_client.zscore(LEASES + "queue:sandrun", first.id) is not None
    plugin.on_execute(*run(other))  # another tenant's bucket
    plugin.on_destroy()
