"""A bare Celery app with a no-op task: the baseline for round-trip latency."""

import os

from celery import Celery

app = Celery("bare", broker=os.environ["BARE_BROKER_URL"], backend=os.environ["BARE_BROKER_URL"])
app.conf.update(task_serializer="json", accept_content=["json"], worker_prefetch_multiplier=1)


@app.task(name="bare.noop")
def noop() -> None:
    """Does nothing; measures Celery's own overhead."""
