"""The two apps compared by ``benchmarks/overhead.py``: same settings, same no-op task."""

from __future__ import annotations

import os

from celery import Celery

from worker.node.app import app as ours

bare = Celery("bare", broker=os.environ["BARE_BROKER_URL"], backend=os.environ["BARE_BROKER_URL"])
bare.config_from_object("celeryconfig")
bare.conf.update(broker_url=os.environ["BARE_BROKER_URL"],
                 result_backend=os.environ["BARE_BROKER_URL"])


@bare.task(name="bench.noop", shared=False)
def bare_noop() -> None:
    """Does nothing."""


@ours.task(name="bench.noop", shared=False)
def ours_noop() -> None:
    """Does nothing, through SandrunTask and the loaded plugins."""


@ours.task(name="bench.sleep", shared=False)
def ours_sleep(seconds: float) -> None:
    """An I/O-bound task: waits without using the CPU (for the scaling benchmark)."""
    import time

    time.sleep(seconds)
