"""The producer API: ``Sandrun`` enqueues jobs, ``JobExecution`` follows one.

::

    with Sandrun.create(plugins=["defaults"]) as client:
        run = client.job().code("print(1)").timeout(30).submit()
        result = run.wait(timeout=60)

Submitting runs ``on_build`` (when a builder is made) and ``on_submit`` in this
process (with the job's correlation id, tenant and baggage on its context, which
travel in the message's headers), checks the payment against the pricing table,
builds the message and runs ``on_publish`` over it (signing; a plugin may take it
over and hold it), then publishes it to the job's queue. Publishing rides out short
broker outages with a bounded,
documented tenacity policy (Celery's own publish retry is off, so the two are
never stacked) and raises :class:`~worker.errors.BrokerUnavailable` after it. A
submission that fails in this process goes through ``on_error`` (operation
``submit``) before it is raised.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from celery import Celery
from pydantic import ValidationError

from worker.broker.factory import make_app
from worker.broker.publisher import Publisher
from worker.broker.urls import redis_client
from worker.client.execution import JobExecution
from worker.client.gpus import GPUCheck
from worker.client.replicas import FleetCheck, replica_publications
from worker.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidJob,
    PublicationHeld,
    SubmissionRejected,
)
from worker.models import Job, JobContext, new_correlation_id
from worker.models.builder import JobBuilder
from worker.plugin.context import BuildContext, ErrorContext, PublishContext, SubmissionContext
from worker.plugin.loader import PluginRef, PluginSpec, parse_plugin_specs
from worker.plugin.manager import PluginManager
from worker.plugin.permissions import parse_plugin_permissions
from worker.plugin.provenance import PROVENANCE_HEADER, to_header
from worker.protocol import (
    ROUND_LABEL,
    RUN_JOB,
    SUBMITTED_HEADER,
    Publication,
    context_headers,
    job_queue,
    replica_task_id,
)
from worker.settings import Settings, load_settings
from worker.stores.deadletter import dead_letter_store_for
from worker.stores.livelogs import LiveLog
from worker.stores.outputs import output_store_for

#: ``JobExecution`` lives in :mod:`worker.client.execution`; importing it from here still works.
__all__ = ["SUBMIT_FAILURES", "JobExecution", "Sandrun"]

#: What ``submit`` hands to ``on_error`` (operation "submit") before raising it:
#: vetoes (PaymentRejected and QueueFull are SubmissionRejected), an unreachable
#: broker, and a job or context the producer's own checks refuse.
SUBMIT_FAILURES = (SubmissionRejected, BrokerUnavailable, InvalidJob)


class Sandrun:
    """The producer client: owns a PluginManager (``on_init`` here) and a Celery app."""

    def __init__(self, app: Celery, manager: PluginManager, settings: Settings) -> None:
        self.app = app
        self.manager = manager
        self.settings = settings
        self.producer = f"{socket.gethostname()}:{id(self):x}"
        self._outputs = output_store_for(str(app.conf.result_backend), settings.output_ttl)
        backend = redis_client(str(app.conf.result_backend))
        self._live = LiveLog(backend) if backend is not None else None
        self.publisher = Publisher(app, settings.publish_retry_seconds)
        self.check_fleet = FleetCheck(app)
        self.check_gpus = GPUCheck(app)

    @classmethod
    def create(cls, *, plugins: Sequence[PluginSpec | PluginRef] | None = None,
               broker_url: str | None = None, result_backend: str | None = None,
               settings: Settings | None = None) -> Sandrun:
        """A client for ``broker_url`` (default: the environment, or the embedded broker)
        with ``plugins`` (default: ``SANDRUN_PLUGINS``)."""
        settings = settings or load_settings()
        app = make_app(broker_url, result_backend)
        manager = PluginManager(dead_letters=dead_letter_store_for(
            str(app.conf.result_backend), ttl=settings.dead_letter_ttl),
                                hook_timeout=settings.hook_timeout,
                                permissions=parse_plugin_permissions(settings.plugin_permissions))
        specs = parse_plugin_specs(settings.plugins) if plugins is None else list(plugins)
        manager.load_all(specs)
        return cls(app, manager, settings)

    def use(self, plugin: PluginRef, config: Any = None) -> Sandrun:
        """Load one more plugin into this client; returns the client for chaining."""
        self.manager.load(plugin, config)
        return self

    def job(self) -> JobBuilder[JobExecution]:
        """A fluent builder whose ``submit()`` submits through this client."""
        builder: JobBuilder[JobExecution] = JobBuilder(submit=self.submit)
        return self.manager.on_build(builder, BuildContext(client=self.producer))

    def submit(self, job: Job, *, correlation_id: str | None = None,
               tenant: str | None = None,
               baggage: Mapping[str, str] | None = None) -> JobExecution:
        """Run ``on_submit``, check the payment, run ``on_publish`` and publish what it
        returns (unless a plugin took the message over); return a handle on the job.

        ``correlation_id`` (default: a new one), ``tenant`` (default: the job's
        ``tenant`` label) and ``baggage`` travel with the job to its worker, its logs,
        dead letters and result. A submission that fails here (vetoed, payment
        refused, queue full, broker unreachable, invalid) goes through ``on_error``
        with ``operation="submit"`` before it is raised (or the error a hook returned)."""
        started = time.perf_counter()
        ctx = SubmissionContext(producer=self.producer, job_id=job.id,
                                queue=job_queue(job, self.settings.default_queue),
                                correlation_id=correlation_id or new_correlation_id(),
                                tenant=tenant, baggage=dict(baggage or {}))
        try:
            with self.manager.span("sandrun.submit", {"sandrun.job_id": job.id,
                                                      "sandrun.correlation_id": str(
                                                          ctx.correlation_id)}):
                job = self._accepted(job, ctx)
                travelled = self._travelling(job, ctx)
                self._send(job, ctx, travelled)
        except SUBMIT_FAILURES as exc:
            reported = self.manager.on_error(exc, ErrorContext(
                operation="submit", job=job, metadata=ctx.metadata))
            if reported is exc:
                raise
            raise reported from exc
        ctx.duration = time.perf_counter() - started
        replicas = [replica_task_id(job, i) for i in range(job.quorum.n)] if job.quorum.n > 1 \
            else []
        return JobExecution(job.id, self.app, self._outputs, travelled, replicas=replicas,
                            live=self._live)

    def _accepted(self, job: Job, ctx: SubmissionContext) -> Job:
        """``on_submit`` between the payment checks: the Job to publish."""
        if self.settings.pricing is not None:
            self.settings.pricing.check_payment(job)
        job = self.manager.on_submit(job, ctx)
        if self.settings.pricing is not None:
            self.settings.pricing.check_payment(job)
        if job.timeout > self.settings.max_job_timeout:
            raise InvalidJob([("timeout", f"{job.timeout:g}s is longer than this deployment "
                               f"allows ({self.settings.max_job_timeout:g}s, "
                               "SANDRUN_MAX_JOB_TIMEOUT)")], source=f"job {job.id}")
        self._check_deadline(job)
        self.check_gpus(job, job_queue(job, self.settings.default_queue))
        if job.quorum.n > 1:  # replicas: enough workers, and a vote of their own
            self.check_fleet(job, job_queue(job, self.settings.default_queue))
            job = job.replace(labels={**job.labels, ROUND_LABEL: uuid.uuid4().hex[:16]})
        return job

    @staticmethod
    def _travelling(job: Job, ctx: SubmissionContext) -> JobContext:
        """The context the job carries, as the ``on_submit`` hooks left it (validated); the
        job's ``tenant`` label is its tenant when none was named and it is a valid one
        (labels allow more than tenants: a label such as "Acme Corp" names no tenant)."""
        tenant = ctx.tenant
        if tenant is None and "tenant" in job.labels:
            with contextlib.suppress(ValidationError):
                tenant = JobContext(tenant=job.labels["tenant"]).tenant
        try:
            return JobContext(correlation_id=ctx.correlation_id, tenant=tenant,
                              baggage=ctx.baggage)
        except ValidationError as exc:
            raise InvalidJob([(".".join(map(str, e["loc"])) or "baggage", e["msg"])
                              for e in exc.errors()], source=f"context of job {job.id}") from None

    def _send(self, job: Job, ctx: SubmissionContext, travelled: JobContext) -> None:
        """Build the message (one per replica of a consensus job), run ``on_publish`` over
        each and publish what it returns."""
        headers = {**ctx.headers, **context_headers(travelled),
                   SUBMITTED_HEADER: f"{time.time():.6f}"}
        if ctx.provenance:  # which plugins changed the job, for its stored result
            headers[PROVENANCE_HEADER] = to_header(ctx.provenance)
        publication = Publication(
            task=RUN_JOB, task_id=job.id, queue=job_queue(job, self.settings.default_queue),
            args=[job.model_dump(mode="json", exclude_defaults=True)],
            eta=job.scheduled_time, expires=job.deadline, headers=headers)
        for message in replica_publications(publication, job):
            self._publish_job(message, job, ctx)

    def _publish_job(self, publication: Publication, job: Job, ctx: SubmissionContext) -> None:
        """``on_publish`` over one message of ``job`` (the job, or one of its replicas),
        then send what it returns unless a plugin took the message over."""
        try:
            publication = self.manager.on_publish(publication, PublishContext(
                job=job, producer=self.producer, metadata=ctx.metadata,
                provenance=ctx.provenance))
        except PublicationHeld:
            return  # a plugin stored the message and sends it later (it logs that itself)
        self.publish(publication)

    def publish(self, publication: Publication) -> None:
        """Send one message to the broker as it is (no hooks), riding out short outages.

        For messages built by hand (a task other than ``run_job``, signed with the
        ``auth`` plugin's ``sign``); jobs should go through :meth:`submit`."""
        if publication.eta is not None:
            self._check_eta(publication.eta)
        self.publisher.publish(publication)

    @staticmethod
    def _check_deadline(job: Job) -> None:
        """A job whose deadline has passed could never run: refuse it at submit."""
        if job.deadline is not None and job.expired():
            raise InvalidJob([("deadline", f"{job.deadline.isoformat()} has already passed; "
                               "give a deadline in the future or an expires_in")],
                             source=f"job {job.id}")

    def _check_eta(self, when: datetime) -> None:
        horizon = int(self.app.conf.broker_transport_options.get("visibility_timeout", 3600))
        if (when - datetime.now(UTC)).total_seconds() > horizon:
            raise ConfigurationError(
                f"scheduled_time {when.isoformat()} is further out than the broker visibility "
                f"timeout ({horizon}s); the job could run twice. Load the scheduling plugin, "
                "which holds far-future jobs until they are due")

    def execution(self, job_id: str, *, replicas: Sequence[str] = ()) -> JobExecution:
        """A handle on a job submitted earlier (by id; ``replicas``: a consensus job's
        replica task ids, for :meth:`JobExecution.cancel`)."""
        return JobExecution(job_id, self.app, self._outputs, replicas=replicas,
                            live=self._live)

    def close(self) -> None:
        """Unload plugins (``on_destroy``) and release broker connections."""
        self.manager.close()
        self.app.close()

    def __enter__(self) -> Sandrun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
