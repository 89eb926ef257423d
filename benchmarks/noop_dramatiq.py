"""The peer of ``benchmarks/throughput.py``: a Dramatiq no-op actor on its Redis broker.

Dramatiq's defaults otherwise (its default middleware, no result backend);
``DRAMATIQ_BROKER_URL`` is a redis-py URL (``unix:///path`` for the private server).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = "noop"

broker = RedisBroker(url=os.environ["DRAMATIQ_BROKER_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    """Does nothing."""
