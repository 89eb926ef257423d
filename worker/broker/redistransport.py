"""kombu's Redis transport with one redis-py client per channel, not one per call.

kombu's Redis channel builds a new ``redis.Redis`` each time it needs a synchronous
client (``Channel.conn_or_acquire``): for every acknowledgement, reject, restore and
unacked-index update, three per job on a worker. The client only wraps the channel's
connection pool, but redis-py 8 fills a response-callback table of some 170 entries
for each one (about 50 µs here), which was 8 % of a worker's time per no-op task in
``benchmarks/throughput.py``. :class:`Channel` builds that client once per connection
pool and hands the same one out: redis-py clients are safe to share between threads,
and each command still takes a connection from the pool, as before.

:class:`SandrunConnection` resolves to this transport wherever kombu would resolve its
own Redis transport (``redis://``, ``rediss://``, ``redis+socket://``), as do its clones
and the connections of its pool (every publish takes one); its URL and options stay as
given. Sandrun's apps use it through :class:`~worker.broker.amqp.SandrunAMQP`.
Everything else is kombu's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu
from kombu.connection import ConnectionPool, PooledConnection
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; :meth:`conn_or_acquire` reuses one client per pool."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """``client``, else this channel's synchronous client, built once for its current
        pool (a fork or a disconnect drops the pool; the next call builds both anew)."""
        if client:
            yield client
            return
        kombus: Any = self  # kombu's own attributes, which its type stubs leave out
        shared = self._shared_client
        if shared is None or shared.connection_pool is not kombus.pool:
            shared = self._shared_client = kombus._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


class _WithTransport:
    """Resolves to :class:`Transport` where kombu would resolve its own Redis transport;
    everything else about the connection (its URL, name, options) stays kombu's."""

    def get_transport_cls(self) -> Any:
        kombus: Any = super()
        transport = kombus.get_transport_cls()
        return Transport if transport is kombu_redis.Transport else transport


class _PooledConnection(_WithTransport, PooledConnection):
    """A connection of a :class:`_ConnectionPool`."""


class _ConnectionPool(ConnectionPool):
    """kombu's connection pool, whose connections keep :class:`Transport`: kombu's builds
    plain ones from the URL, which names kombu's Redis transport again."""

    def new(self) -> Any:
        kombus: Any = self
        return _PooledConnection(self, **dict(kombus.connection._info(resolve=False)))


class SandrunConnection(_WithTransport, kombu.Connection):
    """A kombu connection that uses :class:`Transport` where kombu would use its Redis
    transport, as do its clones (failover) and the connections of its pool (the
    producer pool's, which every publish takes one of)."""

    def Pool(self, limit: int | None = None, **kwargs: Any) -> Any:  # noqa: N802 (kombu's)
        return _ConnectionPool(self, limit=limit, **kwargs)
