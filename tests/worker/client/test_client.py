"""Client behaviour that needs no worker: publishing, on_publish, payment checks,
scheduling."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from worker import Plugin, Publication, PublishContext, SubmissionContext
from worker.client.client import Sandrun
from worker.errors import (
    BrokerUnavailable,
    ConfigurationError,
    PaymentRejected,
    PublicationHeld,
    SubmissionRejected,
)
from worker.models import Job
from worker.settings import Settings


def make(url: str, *plugins: Plugin, **settings: object) -> Sandrun:
    return Sandrun.create(broker_url=url, plugins=list(plugins),
                          settings=Settings(publish_retry_seconds=1.0, **settings))  # type: ignore[arg-type]


class Stamp(Plugin):
    """Carries a value from on_submit to on_publish and stamps it on a new message."""

    name = "stamp"

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        context.metadata["stamp"] = "from-submit"

    def on_publish(self, publication: Publication, context: PublishContext) -> Publication:
        assert context.job is not None
        return replace(publication, headers={**publication.headers, "x-job": context.job.id,
                                             "x-stamp": context.metadata["stamp"]})


class Keep(Plugin):
    """Takes every message over (or vetoes it, with ``veto``)."""

    name = "keep"

    def __init__(self, veto: bool = False) -> None:
        self.veto = veto
        self.kept: list[Publication] = []

    def on_publish(self, publication: Publication, context: PublishContext) -> None:
        if self.veto:
            raise SubmissionRejected("not this one")
        self.kept.append(publication)
        raise PublicationHeld("kept to send later")


def test_the_message_sent_is_the_one_on_publish_returns(redis_server: RedisServer,
                                                        redis_client: redis.Redis) -> None:
    client = make(f"redis+socket://{redis_server.socket}", Stamp())
    run = client.submit(Job(code="1"))
    headers = json.loads(redis_client.lindex("sandrun", 0) or "{}")["headers"]
    assert (headers["x-job"], headers["x-stamp"]) == (run.id, "from-submit")
    client.close()


def test_a_message_a_plugin_takes_over_or_vetoes_is_not_sent(redis_server: RedisServer,
                                                             redis_client: redis.Redis) -> None:
    keep = Keep()
    client = make(f"redis+socket://{redis_server.socket}", keep)
    later = datetime.now(UTC) + timedelta(days=2)  # past the horizon: sending it would fail
    run = client.submit(Job(code="1", scheduled_time=later))
    assert [p.task_id for p in keep.kept] == [run.id] and keep.kept[0].eta == later
    assert redis_client.llen("sandrun") == 0 and run.status() == "queued"
    keep.veto = True
    with pytest.raises(SubmissionRejected, match="not this one"):
        client.submit(Job(code="1"))
    assert redis_client.llen("sandrun") == 0
    client.close()


def test_unreachable_broker_is_a_clear_error_within_the_retry_window(tmp_path: Path) -> None:
    client = make(f"redis+socket://{tmp_path}/nobody.sock")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable for 1s"):
        client.submit(Job(code="print(1)"))
    assert time.monotonic() - started < 10
    client.close()


def test_publish_rides_out_a_short_outage(tmp_path: Path) -> None:
    servers: list[RedisServer] = []
    starter = threading.Timer(0.5, lambda: servers.append(
        RedisServer(tmp_path, die_with_parent=False)))
    starter.start()
    client = Sandrun.create(broker_url=f"redis+socket://{tmp_path}/redis.sock", plugins=[],
                            settings=Settings(publish_retry_seconds=10))
    try:
        run = client.submit(Job(code="print(1)"))
        starter.join()
        queued = servers[0].client().llen("sandrun")
        assert queued == 1 and run.status() == "queued"
    finally:
        starter.join()
        client.close()
        for server in servers:
            server.stop()


def test_payment_is_checked_before_publishing(redis_server: RedisServer,
                                              redis_client: object) -> None:
    pricing = {"currency": "USD", "cpu_second": "0.01"}
    client = make(f"redis+socket://{redis_server.socket}", pricing=pricing)
    with pytest.raises(PaymentRejected, match="worst case"):
        client.submit(Job(code="1", timeout=100, payment={"amount": "0.5", "currency": "USD"}))
    assert redis_server.client().llen("sandrun") == 0
    client.submit(Job(code="1", timeout=100, payment={"amount": "1", "currency": "USD"}))
    assert redis_server.client().llen("sandrun") == 1
    client.close()


def test_far_future_schedule_needs_the_scheduling_plugin(redis_server: RedisServer,
                                                         redis_client: object) -> None:
    client = make(f"redis+socket://{redis_server.socket}")
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(ConfigurationError, match="scheduling plugin"):
        client.submit(Job(code="1", scheduled_time=later))
    soon = datetime.now(UTC) + timedelta(seconds=30)
    client.submit(Job(code="1", scheduled_time=soon))
    client.close()
