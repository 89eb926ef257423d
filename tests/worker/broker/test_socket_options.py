"""Every Redis connection Sandrun opens has a socket timeout, health checks and (over
TCP) keepalive, so a half-open connection is noticed: the options reach real sockets.

The TCP cases go through ``tests.support.tcpproxy`` (127.0.0.1 to the private
redis-server's unix socket), so kombu, Celery's backend and Sandrun's own clients
really connect over TCP and the kernel's socket options can be read back.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer
from tests.support.tcpproxy import CuttableProxy
from worker.broker.factory import make_app
from worker.broker.urls import KEEPALIVE_OPTIONS, redis_client, redis_socket_options
from worker.stores.storage import RedisStorageBackend


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[CuttableProxy]:
    made = CuttableProxy(redis_server.socket)
    try:
        yield made
    finally:
        made.close()


def live_socket(client: redis.Redis[bytes]) -> socket.socket:
    """The socket of a connection of ``client`` after a PING on it."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("PING")
        assert conn.read_response() in (b"PONG", "PONG")
        sock = conn._sock
        assert sock is not None
        return sock
    finally:
        client.connection_pool.release(conn)


def assert_keepalive(sock: socket.socket) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    for option, value in KEEPALIVE_OPTIONS.items():
        assert sock.getsockopt(socket.IPPROTO_TCP, option) == value
    assert sock.gettimeout() == 30.0
    # unacknowledged data is dropped with the connection after the socket timeout, so a
    # command that timed out is not delivered later (a refused publish queued after all)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000


def test_sandrun_clients_over_tcp_get_keepalive_and_timeouts(proxy: CuttableProxy) -> None:
    client = redis_client(proxy.url)
    assert client is not None
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 30.0 and kwargs["health_check_interval"] == 10
    assert_keepalive(live_socket(client))
    storage = RedisStorageBackend.from_url(proxy.url)
    assert_keepalive(live_socket(storage._client))
    client.close()


def test_unix_socket_clients_get_timeouts_without_keepalive(redis_server: RedisServer
                                                            ) -> None:
    client = redis_client(f"redis+socket://{redis_server.socket}")
    assert client is not None
    assert "socket_keepalive" not in client.connection_pool.connection_kwargs
    assert live_socket(client).gettimeout() == 30.0  # a unix socket accepts the rest
    client.close()


def test_celery_broker_and_backend_connections_get_them(proxy: CuttableProxy) -> None:
    app = make_app(broker_url=proxy.url, result_backend=proxy.url)
    options = app.conf.broker_transport_options
    assert options["socket_timeout"] == 30.0 and options["health_check_interval"] == 10
    assert options["visibility_timeout"] > 0, "the broker's own options must be kept"
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        assert_keepalive(live_socket(channel.client))
    backend: Any = app.backend
    assert backend.connparams["health_check_interval"] == 10
    sock = live_socket(backend.client)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.gettimeout() == 30.0


def test_celery_on_a_unix_socket_still_connects(redis_server: RedisServer) -> None:
    url = f"redis+socket://{redis_server.socket}"
    app = make_app(broker_url=url, result_backend=url)
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        assert live_socket(channel.client).gettimeout() == 30.0
    backend: Any = app.backend
    assert live_socket(backend.client).gettimeout() == 30.0


def test_the_timeouts_are_tunable_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_REDIS_SOCKET_TIMEOUT", "45")
    monkeypatch.setenv("SANDRUN_REDIS_HEALTH_CHECK_INTERVAL", "3")
    options = redis_socket_options("redis://broker:6379/0")
    assert options["socket_timeout"] == 45.0 and options["health_check_interval"] == 3
    assert options["socket_keepalive_options"][socket.TCP_USER_TIMEOUT] == 45_000
    monkeypatch.setenv("SANDRUN_REDIS_SOCKET_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SANDRUN_REDIS_SOCKET_TIMEOUT='soon' is not a "
                                         "positive number of seconds"):
        redis_socket_options("redis://broker:6379/0")
