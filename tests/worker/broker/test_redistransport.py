"""The Redis transport of Sandrun's apps: one redis-py client per channel's pool, and
messages published, consumed, acknowledged and restored as with kombu's own."""

from __future__ import annotations

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from tests.conftest import RedisServer
from worker.broker.factory import make_app
from worker.broker.redistransport import Channel, SandrunConnection, Transport
from worker.broker.urls import kombu_url


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0",
                                 "redis+socket:///nonexistent/redis.sock"])
def test_every_redis_url_of_a_sandrun_app_gets_the_transport(url: str) -> None:
    app = make_app(url, "redis://127.0.0.1:1/0")
    connection = app.connection_for_write()
    assert isinstance(connection, SandrunConnection)
    assert connection.get_transport_cls() is Transport
    assert connection.clone().get_transport_cls() is Transport  # failover
    with app.pool.acquire() as pooled:  # the producer pool's own connections
        assert pooled.get_transport_cls() is Transport


def test_other_transports_are_kombus_own() -> None:
    assert SandrunConnection("memory://").get_transport_cls() is not Transport
    assert kombu.Connection("redis://127.0.0.1:1/0").get_transport_cls() is \
        kombu_redis.Transport


def test_a_channel_reuses_one_client_until_its_pool_is_dropped(
        redis_server: RedisServer) -> None:
    app = make_app(kombu_url(redis_server.url))
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        given = redis.Redis(connection_pool=channel.pool)
        with channel.conn_or_acquire(given) as client:
            assert client is given
        channel._disconnect_pools()  # what a fork or a lost connection does
        with channel.conn_or_acquire() as rebuilt:
            assert rebuilt is not first
            assert rebuilt.connection_pool is channel.pool
            assert rebuilt.ping()


def test_a_producer_publishes_through_the_transport(redis_server: RedisServer,
                                                    redis_client: redis.Redis) -> None:
    app = make_app(kombu_url(redis_server.url))
    with app.producer_or_acquire() as producer:
        assert isinstance(producer.channel, Channel)
        producer.publish("hello", routing_key="published-test")
    assert redis_client.llen("published-test") == 1


def test_messages_are_acknowledged_and_restored_through_the_shared_client(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    app = make_app(kombu_url(redis_server.url))
    queue = kombu.Queue("transport-test", routing_key="transport-test")
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for body in ("one", "two"):
            producer.publish(body, routing_key="transport-test", declare=[queue])
        simple = connection.SimpleQueue(queue)
        first = simple.get(timeout=5)
        assert redis_client.hlen("unacked") == 1
        first.ack()
        assert redis_client.hlen("unacked") == 0
        second = simple.get(timeout=5)
        second.requeue()  # back to the queue's head, out of the unacked index
        assert redis_client.hlen("unacked") == 0
        again = simple.get(timeout=5)
        assert again.payload == "two"
        again.ack()
        assert redis_client.hlen("unacked") == 0 and redis_client.llen("transport-test") == 0
        simple.close()
