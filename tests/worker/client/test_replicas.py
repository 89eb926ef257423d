"""The producer's side of consensus jobs, without workers: the fleet check, one message
per replica, each through on_publish, and the payment of n runs."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from tests.worker.client.test_client import Keep, make
from worker.client import replicas
from worker.client.client import Sandrun
from worker.errors import ConsensusUnavailable, PaymentRejected
from worker.models import Job, WorkerInfo
from worker.models.pricing import Pricing
from worker.protocol import ROUND_LABEL, replica_index
from worker.stores import registry


def test_a_consensus_job_needs_a_redis_backend_to_find_workers(tmp_path: Path) -> None:
    with Sandrun.create(broker_url="memory://", result_backend=f"file://{tmp_path}",
                        plugins=[]) as client, \
            pytest.raises(ConsensusUnavailable, match="needs a Redis result backend"):
        client.submit(Job(code="1", consensus="2-of-3"))


def test_advertised_workers_that_do_not_answer_are_not_counted(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    for name in ("gone1@h", "gone2@h", "gone3@h"):
        registry.register(redis_client, WorkerInfo(hostname=name, pid=1, queues=["sandrun"],
                                                   extra={"consensus": "1.0.0"}))
    registry.register(redis_client, WorkerInfo(hostname="plain@h", pid=1, queues=["sandrun"]))
    client = make(f"redis+socket://{redis_server.socket}")
    with pytest.raises(ConsensusUnavailable, match=r"3 replicas .* but 0 live worker\(s\)"):
        client.submit(Job(code="1", consensus="2-of-3"))
    assert redis_client.llen("sandrun") == 0  # nothing was published
    client.close()


def test_each_replica_is_its_own_message_through_on_publish(
        redis_server: RedisServer, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    keep = Keep()
    client = make(f"redis+socket://{redis_server.socket}", keep)
    monkeypatch.setattr(client, "check_fleet", lambda job, queue: None)
    run = client.submit(Job(code="1", consensus="2-of-3"))
    first = Job.model_validate(keep.kept[0].args[0])
    assert [p.task_id for p in keep.kept] == run.replicas
    assert [replica_index(t, first) for t in run.replicas] == [0, 1, 2]
    assert all(p.args == keep.kept[0].args for p in keep.kept)  # the same job, one round
    again = client.submit(first)
    second = Job.model_validate(keep.kept[3].args[0])
    assert again.id == run.id and second.labels[ROUND_LABEL] != first.labels[ROUND_LABEL]
    assert set(again.replicas).isdisjoint(run.replicas)
    client.close()


def test_replicas_are_published_to_the_jobs_queue(redis_server: RedisServer,
                                                  redis_client: redis.Redis,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client = make(f"redis+socket://{redis_server.socket}")
    monkeypatch.setattr(client, "check_fleet", lambda job, queue: None)
    run = client.submit(Job(code="1", consensus="low"))
    sent = [json.loads(m)["headers"]["id"] for m in redis_client.lrange("sandrun", 0, -1)]
    assert sorted(sent) == sorted(run.replicas) and len(sent) == 2
    client.close()


def test_a_queue_that_passed_is_trusted_for_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(replicas, "check_fleet", lambda app, job, queue: calls.append(queue))
    now = [100.0]
    check = replicas.FleetCheck(app=None, ttl=10, clock=lambda: now[0])  # type: ignore[arg-type]
    job = Job(code="1", consensus="2-of-3")
    check(job, "q")
    now[0] = 109.0
    check(job, "q")
    check(Job(code="1", consensus="3-of-5"), "q")  # more replicas: checked on its own
    now[0] = 110.5
    check(job, "q")
    assert calls == ["q", "q", "q"]


def test_the_payment_covers_every_replica() -> None:
    pricing = Pricing(currency="USD", cpu_second=Decimal("0.001"))
    assert pricing.worst_case(Job(code="1", timeout=100, consensus="2-of-3")) == Decimal("0.3")
    job = Job(code="1", timeout=100, consensus="3-of-5", payment={"amount": "0.4",
                                                                  "currency": "USD"})
    with pytest.raises(PaymentRejected, match="x5 replicas for consensus 3-of-5"):
        pricing.check_payment(job)
