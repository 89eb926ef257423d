"""RabbitMQ job queues as producers and workers declare them, on a private vhost of the
machine's RabbitMQ (created and deleted by the module's fixture)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.rabbit import private_vhost
from worker.broker.amqp import (
    DEAD_EXCHANGE,
    HEARTBEAT_SECONDS,
    delayed_countdown,
    delivered_queue,
    queue_arguments,
    queue_depth,
    redelivery_options,
    republished_headers,
)
from worker.broker.factory import make_app
from worker.broker.publisher import Publisher
from worker.errors import ConfigurationError
from worker.protocol import Publication

BACKEND = "redis://127.0.0.1:6379/15"  # never connected to: these tests read no result


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with private_vhost("amqp-unit") as url:
        yield url


def test_quorum_layout_has_a_delivery_limit_and_the_dead_letter_exchange() -> None:
    args = queue_arguments("quorum", 4)
    assert args["x-queue-type"] == "quorum" and args["x-delivery-limit"] == 4
    assert args["x-dead-letter-exchange"] == DEAD_EXCHANGE
    assert args["x-dead-letter-strategy"] == "at-least-once"
    priority = queue_arguments("priority", 4)
    assert priority["x-max-priority"] == 10 and "x-delivery-limit" not in priority
    with pytest.raises(ValueError, match="SANDRUN_AMQP_QUEUES is 'lazy'"):
        queue_arguments("lazy", 4)


def test_every_job_queue_of_an_amqp_app_is_declared_the_same_way(
        monkeypatch: pytest.MonkeyPatch, vhost: str) -> None:
    monkeypatch.setenv("SANDRUN_AMQP_DELIVERY_LIMIT", "7")
    app = make_app(vhost, BACKEND)
    assert app.conf.broker_transport_options["confirm_publish"] is True
    for name in ("sandrun", "sandrun.gpu.a100", "mine"):
        queue = app.amqp.queues[name]
        assert queue.exchange.type == "topic" and queue.routing_key == name
        assert queue.queue_arguments == queue_arguments("quorum", 7)
    monkeypatch.setenv("SANDRUN_AMQP_QUEUES", "priority")
    assert make_app(vhost, BACKEND).amqp.queues["x"].queue_arguments["x-max-priority"] == 10
    assert make_app("memory://", "cache+memory://").amqp.queues["x"].queue_arguments is None


def test_an_amqp_broker_needs_a_redis_result_backend_and_known_settings(
        vhost: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="SANDRUN_RESULT_BACKEND=redis://"):
        make_app(vhost, "cache+memory://")
    monkeypatch.setenv("SANDRUN_AMQP_DELIVERY_LIMIT", "0")
    with pytest.raises(ConfigurationError, match="SANDRUN_AMQP_DELIVERY_LIMIT='0'"):
        make_app(vhost, BACKEND)


def test_an_amqp_connection_negotiates_the_heartbeat_that_reveals_a_half_open_one(
        vhost: str) -> None:
    """The worker's consumer opens its connection with ``broker_heartbeat`` (producers
    send none); RabbitMQ agrees to it (its own default is 60 s: the lower wins)."""
    app = make_app(vhost, BACKEND)
    assert app.conf.broker_heartbeat == HEARTBEAT_SECONDS < 120  # Celery's default: 4 min
    with app.connection_for_read(heartbeat=app.conf.broker_heartbeat) as connection:
        connection.connect()
        assert connection.connection.heartbeat == HEARTBEAT_SECONDS


def test_countdowns_under_a_second_are_rounded_up_only_for_native_delays(vhost: str) -> None:
    amqp_conf = make_app(vhost, BACKEND).conf
    assert delayed_countdown(amqp_conf, 0.2) == 1.0 and delayed_countdown(amqp_conf, 2.5) == 3.0
    assert delayed_countdown(amqp_conf, 0) == 0
    assert delayed_countdown(make_app("memory://", "cache+memory://").conf, 0.2) == 0.2


def test_a_published_job_is_counted_and_a_near_eta_arrives_after_its_delay(vhost: str) -> None:
    app = make_app(vhost, BACKEND)
    try:
        assert queue_depth(app, "unit") == 0  # not declared yet
        publisher = Publisher(app, retry_seconds=5)
        publisher.publish(Publication(task="tests.add", task_id="now", queue="unit",
                                      args=[1, 2]))
        assert queue_depth(app, "unit") == 1
        # A delayed message published before any worker declared the delay exchanges:
        # the publisher declares them and binds the queue, so it is not dropped.
        eta = datetime.now(UTC) + timedelta(seconds=0.4)
        publisher.publish(Publication(task="tests.add", task_id="later", queue="unit",
                                      args=[1, 2], eta=eta))
        deadline = time.monotonic() + 30
        while queue_depth(app, "unit") < 2:
            assert time.monotonic() < deadline, "the delayed message never arrived"
            time.sleep(0.2)
    finally:
        app.close()


def test_a_redelivery_names_its_queue_only_on_native_delays(vhost: str) -> None:
    amqp_conf = make_app(vhost, BACKEND).conf
    delayed = {"exchange": "celery_delayed_27", "routing_key": "0." * 27 + "1.cap"}
    assert redelivery_options(amqp_conf, delayed, 0.3) == {"countdown": 1.0, "queue": "cap"}
    direct = {"exchange": "sandrun.gpu", "routing_key": "sandrun.gpu"}
    assert redelivery_options(amqp_conf, direct, 2)["queue"] == "sandrun.gpu"
    assert redelivery_options(amqp_conf, {}, 2) == {"countdown": 2.0}
    redis_conf = make_app("memory://", "cache+memory://").conf
    assert redelivery_options(redis_conf, delayed, 0.3) == {"countdown": 0.3}


def test_the_queue_a_delivery_came_from_drops_the_delay_prefix() -> None:
    assert delivered_queue({"routing_key": "0." * 27 + "1.cap"}) == "cap"
    assert delivered_queue({"routing_key": "sandrun.gpu"}) == "sandrun.gpu"
    assert delivered_queue({}) is None and delivered_queue(None) is None
    for hostile in ({"routing_key": {"a": 1}}, {"routing_key": 7}, {"routing_key": "0." * 28}):
        assert delivered_queue(hostile) is None  # not a queue name


def test_a_republished_copy_leaves_out_what_the_broker_wrote() -> None:
    headers = {"x-death": [{"queue": "celery_delay_0", "reason": "expired", "count": 1}],
               "x-first-death-queue": "celery_delay_0", "x-last-death-reason": "expired",
               "x-delivery-count": 2, "sandrun_lease_waits": 1, "x-custom": "kept"}
    assert republished_headers(headers) == {"sandrun_lease_waits": 1, "x-custom": "kept"}
    assert republished_headers(None) == {}
