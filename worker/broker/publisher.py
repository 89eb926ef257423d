"""The one way a finished message reaches the broker: :class:`Publisher`.

The producer client and the scheduling plugin (releasing held and fair jobs)
both publish through it, so both ride out a short broker outage the same way
(:func:`~worker.broker.policies.publish_policy`, ``SANDRUN_PUBLISH_RETRY_SECONDS``)
and both end with :class:`~worker.errors.BrokerUnavailable` when the broker stays
away. Celery's own publish retry is off in every message's options, so the two
retries are never stacked.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from worker.broker.policies import TRANSIENT_PUBLISH_ERRORS, publish_policy, transient_publish_error
from worker.errors import BrokerUnavailable
from worker.protocol import Publication


class Publisher:
    """Sends :class:`~worker.protocol.Publication` s as they are, through a Celery app."""

    def __init__(self, app: Any, retry_seconds: float) -> None:
        self.app = app
        self.retry_seconds = retry_seconds

    def publish(self, publication: Publication) -> None:
        """Send one message unchanged; raise BrokerUnavailable after ``retry_seconds`` of
        transient broker errors (other errors propagate at once)."""
        try:
            for attempt in publish_policy(self.retry_seconds):
                with attempt:
                    if publication.eta is not None:
                        self._prepare_delay(publication)
                    self.app.send_task(publication.task, args=publication.args,
                                       kwargs=publication.kwargs, **publication.options())
        except (*TRANSIENT_PUBLISH_ERRORS, RuntimeError) as exc:
            if not transient_publish_error(exc):
                raise
            raise BrokerUnavailable(
                f"cannot publish job {publication.task_id}: the broker stayed unreachable for "
                f"{self.retry_seconds:g}s ({exc}); check SANDRUN_BROKER_URL and that the "
                "broker is running. The job is not queued unless the broker received it just "
                "as the connection failed: to retry, submit the same job (same id) again "
                "rather than a new one") from exc

    def _prepare_delay(self, publication: Publication) -> None:
        """On RabbitMQ's native delayed delivery: make sure the delay exchanges exist and
        lead to the queue, and wait out an ETA less than a second away (whole seconds
        only there; the ETA itself is kept, a signature covers it)."""
        # imported here: the AMQP helpers load Celery's, which the modules that only need
        # Publisher (plugins listed by ``sandrun plugins list``) must not pay for
        from worker.broker.amqp import delays_natively, prepare_delayed_delivery

        if not delays_natively(self.app.conf):
            return
        prepare_delayed_delivery(self.app, publication.queue)
        assert publication.eta is not None
        eta = publication.eta if publication.eta.tzinfo else publication.eta.replace(tzinfo=UTC)
        wait = (eta - datetime.now(UTC)).total_seconds()
        if 0 < wait < 1:
            time.sleep(wait)
