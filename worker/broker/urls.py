"""The one place that reads and rewrites broker and result-backend URLs.

Celery and kombu spell a Redis unix socket ``redis+socket:///path``; redis-py
spells it ``unix:///path``. Everything that talks to Redis directly (plugin
storage, dead letters, outputs, attempts, token storage, the scheduling store,
the worker registry) gets its client from :func:`redis_client`, so a URL rule
lives here once.

Every Redis connection Sandrun opens, its own clients and Celery's (broker and result
backend, :func:`celery_redis_settings`), gets the same socket options
(:func:`redis_socket_options`), so that a connection whose peer vanished without a
word (a host partitioned, a NAT or firewall that forgot it: a half-open TCP
connection) is noticed instead of waited on forever:

* ``socket_timeout`` (``SANDRUN_REDIS_SOCKET_TIMEOUT``, default 30 s): no reply to a
  command within it is an error. It must exceed the longest blocking call on a
  connection; Sandrun's clients send none, and kombu's BRPOP (1 s) and Celery's
  result subscription wait in the event loop, outside it.
* ``socket_connect_timeout`` (5 s): a broker host that does not answer a connect.
* ``health_check_interval`` (``SANDRUN_REDIS_HEALTH_CHECK_INTERVAL``, default 10 s): a
  connection idle longer is PINGed before it is used again; kombu also drops a BRPOP
  whose reply is overdue by more than 1 s + this, so a consumer on a dead connection
  reconnects within about 1 s + 2 x this.
* TCP keepalive (TCP URLs only; a unix socket has no peer to lose): probes after 10 s
  idle, every 5 s, 3 unanswered close the connection (about 25 s, or the socket timeout
  if longer: the user timeout below bounds it).
* ``TCP_USER_TIMEOUT`` (TCP URLs, Linux) of the socket timeout: data the peer has not
  acknowledged within it is dropped with the connection. Without it a command that
  timed out while the link was down stays in the closed socket's send buffer and the
  kernel delivers it once the link is back: a job whose publish raised
  BrokerUnavailable would be queued after all (tests/reliability/test_host_links.py).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Schemes served by Redis, in either spelling.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://", "unix://")
#: Schemes served by RabbitMQ (kombu's py-amqp transport).
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_redis(url: str) -> bool:
    """True for URLs served by Redis (``redis://``, ``rediss://``, ``redis+socket://``,
    ``unix://``)."""
    return url.startswith(REDIS_SCHEMES)


def is_amqp(url: str) -> bool:
    """True for URLs served by RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``)."""
    return url.startswith(AMQP_SCHEMES)


def redis_url(url: str) -> str:
    """A URL redis-py understands, from a kombu/Celery one (``redis+socket://`` ->
    ``unix://``)."""
    return url.replace("redis+socket://", "unix://", 1)


def kombu_url(url: str) -> str:
    """A URL kombu and Celery understand, from a redis-py one (``unix://`` ->
    ``redis+socket://``)."""
    return url.replace("unix://", "redis+socket://", 1)


def redis_client(url: str) -> redis.Redis[bytes] | None:
    """A Redis client for ``url`` in either spelling, or None when ``url`` is not Redis.

    Connecting is lazy: nothing is sent until the first command."""
    if not is_redis(url):
        return None
    return redis.Redis.from_url(redis_url(url), **redis_socket_options(url))


def bounded_redis_client(url: str, timeout: float) -> redis.Redis[bytes] | None:
    """A client of ``url`` (as :func:`redis_client`) whose every call ends within about
    ``timeout`` to connect plus ``timeout`` to answer, never retried: for a caller that
    must keep its own clock while Redis is out of reach (a worker renewing the leases of
    its running jobs, :mod:`worker.node.leasekeeper`)."""
    if not is_redis(url):
        return None
    options = {**redis_socket_options(url), "socket_timeout": timeout,
               "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    return redis.Redis.from_url(redis_url(url), **options)


#: TCP keepalive: first probe after 10 s idle, then every 5 s; 3 unanswered end it.
KEEPALIVE_OPTIONS = {option: value for name, value in
                     (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
                     if (option := getattr(socket, name, None)) is not None}
SOCKET_CONNECT_TIMEOUT = 5.0


def _seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name``."""
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{name}={raw!r} is not a positive number of seconds; set it to "
                         f"e.g. {default:g} or unset it")
    return value


def is_tcp(url: str) -> bool:
    """True for Redis URLs over TCP (``redis://``, ``rediss://``), not a unix socket."""
    return url.startswith(("redis://", "rediss://"))


def redis_socket_options(url: str) -> dict[str, Any]:
    """The redis-py connection options every Sandrun client of ``url`` gets (see the
    module docstring for each value and why)."""
    options: dict[str, Any] = {
        "socket_timeout": _seconds("SANDRUN_REDIS_SOCKET_TIMEOUT", 30.0),
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
        "health_check_interval": int(_seconds("SANDRUN_REDIS_HEALTH_CHECK_INTERVAL", 10.0)),
    }
    if is_tcp(redis_url(url)):
        options.update(socket_keepalive=True,
                       socket_keepalive_options=tcp_options(options["socket_timeout"]))
    return options


def tcp_options(socket_timeout: float) -> dict[int, int]:
    """The TCP-level options of a Redis connection over TCP: keepalive, and a user
    timeout equal to ``socket_timeout`` (see the module docstring)."""
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if user_timeout is None:
        return dict(KEEPALIVE_OPTIONS)
    return {**KEEPALIVE_OPTIONS, user_timeout: int(socket_timeout * 1000)}


def celery_redis_settings(broker_url: str, result_backend: str,
                          transport_options: dict[str, Any]) -> dict[str, Any]:
    """Celery settings that give its Redis broker and result-backend connections the
    same options as :func:`redis_socket_options` (nothing for a broker or backend that
    is not Redis). ``transport_options`` are the broker's current ones, kept."""
    settings: dict[str, Any] = {}
    if is_redis(broker_url):
        settings["broker_transport_options"] = {**transport_options,
                                                **redis_socket_options(broker_url)}
    if is_redis(result_backend):
        options = redis_socket_options(result_backend)
        settings.update(redis_socket_timeout=options["socket_timeout"],
                        redis_socket_connect_timeout=options["socket_connect_timeout"],
                        redis_backend_health_check_interval=options["health_check_interval"])
        if is_tcp(result_backend):  # Celery passes it on as is; a unix socket refuses it
            settings["redis_socket_keepalive"] = True
    return settings
