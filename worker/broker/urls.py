"""The one place that reads and rewrites broker and result-backend URLs.

Celery and kombu spell a Redis unix socket ``redis+socket:///path``; redis-py
spells it ``unix:///path``. Everything that talks to Redis directly (plugin
storage, dead letters, outputs, attempts, token storage, the scheduling store,
the worker registry) gets its client from :func:`redis_client`, so a URL rule
lives here once.
"""

from __future__ import annotations

import redis

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
    return redis.Redis.from_url(redis_url(url))
