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
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from pydantic import ValidationError

from worker.broker.factory import make_app
from worker.broker.publisher import Publisher
from worker.broker.urls import redis_client
from worker.client.cancel import cancel_job
from worker.client.follow import LogLine, follow, result_lines
from worker.client.gpus import GPUCheck
from worker.client.replicas import FleetCheck, replica_publications
from worker.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidJob,
    PublicationHeld,
    SandrunError,
    SubmissionRejected,
    WaitTimeout,
)
from worker.models import ErrorInfo, Job, JobContext, JobResult, Progress, new_correlation_id
from worker.models.builder import JobBuilder
from worker.plugin.context import BuildContext, ErrorContext, PublishContext, SubmissionContext
from worker.plugin.loader import PluginRef, PluginSpec, parse_plugin_specs
from worker.plugin.manager import PluginManager
from worker.plugin.permissions import parse_plugin_permissions
from worker.plugin.provenance import PROVENANCE_HEADER, to_header
from worker.protocol import (
    PROGRESS_STATE,
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
from worker.stores.outputs import OutputStore, output_store_for

WAIT_SLICE = 1.0
STATE_NAMES = {"PENDING": "queued", "RECEIVED": "queued", "STARTED": "running",
               "PROGRESS": "running", "RETRY": "retrying", "REVOKED": "cancelled",
               "FAILURE": "failed"}
#: What ``submit`` hands to ``on_error`` (operation "submit") before raising it:
#: vetoes (PaymentRejected and QueueFull are SubmissionRejected), an unreachable
#: broker, and a job or context the producer's own checks refuse.
SUBMIT_FAILURES = (SubmissionRejected, BrokerUnavailable, InvalidJob)


def _expired(revoked: Any) -> bool:
    """Whether a REVOKED state is Celery's ``expires`` (or the scheduling plugin's
    release path) discarding a job past its deadline, not a cancel: Celery stores
    ``TaskRevokedError('expired')`` for those."""
    return str(revoked) == "expired"


class JobExecution:
    """A handle on one submitted job; ``context`` is what it travels with (correlation id,
    tenant, baggage), None for a handle made from a job id."""

    def __init__(self, job_id: str, app: Celery, outputs: OutputStore,
                 context: JobContext | None = None, *, replicas: Sequence[str] = (),
                 live: LiveLog | None = None) -> None:
        """``replicas``: the task ids of a consensus job's replica messages, which
        :meth:`cancel` revokes with it; ``live``: where running jobs' output streams."""
        self.id = job_id
        self.context = context
        self._app = app
        self._outputs = outputs
        self._live = live
        self.replicas = list(replicas)

    @property
    def correlation_id(self) -> str | None:
        """The correlation id the job was submitted with (None if unknown here)."""
        return self.context.correlation_id if self.context else None

    def __repr__(self) -> str:
        return f"JobExecution({self.id!r})"

    def _async(self) -> AsyncResult[Any]:
        return AsyncResult(self.id, app=self._app)

    def status(self) -> str:
        """queued, running, retrying, or the final JobResult status (a running job's
        progress, if it reports any, is :meth:`progress`)."""
        meta = self._app.backend.get_task_meta(self.id)
        if meta["status"] == "SUCCESS":
            return str(JobResult.model_validate(meta["result"]).status)
        state = str(meta["status"])
        if state == "REVOKED" and _expired(meta["result"]):
            return "expired"
        return STATE_NAMES.get(state, state.lower())

    def progress(self) -> Progress | None:
        """The latest progress the running job reported (``SANDRUN_PROGRESS_FD``, see
        docs/operations.md), or None: it reported none, or it is not running."""
        meta = self._app.backend.get_task_meta(self.id)
        if meta["status"] != PROGRESS_STATE:
            return None
        try:
            return Progress.model_validate(meta["result"])
        except ValidationError:
            return None

    def result(self) -> JobResult | None:
        """The result if the job has finished, else None (never blocks)."""
        meta = self._app.backend.get_task_meta(self.id)
        return self._to_result(meta["status"], meta["result"])

    def _to_result(self, state: str, value: Any) -> JobResult | None:
        if state == "SUCCESS":
            return JobResult.model_validate(value)
        if state == "REVOKED" and _expired(value):
            return JobResult(id=self.id, status="expired", outcome="expired",
                             error=ErrorInfo(type="JobExpired", message=(
                                 "the job's deadline passed before it started")))
        if state == "REVOKED":
            return JobResult(id=self.id, status="cancelled", outcome="cancelled")
        if state == "FAILURE":
            exc = value if isinstance(value, BaseException) else Exception(str(value))
            return JobResult(id=self.id, status="failed", outcome="failed",
                             error=ErrorInfo(type=type(exc).__name__, message=str(exc)))
        return None

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> JobResult:
        """Block until the job finishes; raise WaitTimeout after ``timeout`` seconds.

        Results arrive through the backend's push channel; every second the stored
        state is also read directly, so a subscription lost in a broker outage
        cannot make the wait hang."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = WAIT_SLICE if deadline is None else min(WAIT_SLICE,
                                                                 deadline - time.monotonic())
            if remaining <= 0:
                raise WaitTimeout(f"job {self.id} did not finish within {timeout}s (status: "
                                  f"{self.status()}); wait longer or check the workers")
            handle = self._async()
            try:
                handle.get(timeout=remaining, propagate=False, interval=poll)
            except (TimeoutError, CeleryTimeoutError):
                result = self.result()
            else:
                result = self._to_result(handle.state, handle.result)
            if result is not None:
                return result

    @overload
    def logs(self, follow: Literal[False] = False, timeout: float | None = None
             ) -> tuple[str, str]: ...

    @overload
    def logs(self, follow: Literal[True], timeout: float | None = None
             ) -> Iterator[LogLine]: ...

    def logs(self, follow: bool = False, timeout: float | None = None
             ) -> tuple[str, str] | Iterator[LogLine]:
        """(stdout, stderr) of a finished job, empty while it runs; with ``follow``, an
        iterator of the job's lines (:class:`LogLine`) as it prints them, which ends when
        the job has a final result (WaitTimeout after ``timeout`` seconds without one).

        Following needs a Redis result backend; with another, it waits for the result
        and yields its stdout and stderr."""
        if follow:
            return self._follow(timeout)
        result = self.result()
        return (result.stdout, result.stderr) if result else ("", "")

    def _follow(self, timeout: float | None) -> Iterator[LogLine]:
        if self._live is None:
            return result_lines(self.wait(timeout))
        return follow(self._live, self.id, self.result, timeout)

    def cancel(self) -> str:
        """Cancel the job wherever it is and return where it was: ``queued``, ``held``,
        ``scheduled``, ``retrying``, ``running`` (terminated, its whole process tree with
        it), ``finished`` (nothing changed) or ``unknown`` (no Redis to remember it in).

        The cancel is remembered in the result backend's Redis, so a worker that starts
        later, or the scheduling plugin releasing a held job, skips it too; the job's
        stored status is ``cancelled``. A consensus job's replicas are revoked with it
        (workers skip a replica whose job was cancelled). See :mod:`worker.client.cancel`."""
        return cancel_job(self._app, self.id, self.replicas)

    def _output_key(self) -> str:
        """Where this job's outputs are stored: under its id, or, for a consensus job,
        under the replica whose result the vote kept (``consensus.canonical``)."""
        result = self.result()
        if result is not None and result.consensus is not None and result.consensus.canonical:
            return result.consensus.canonical
        return self.id

    def download(self, path: str, dest: str | Path) -> Path:
        """Write output ``path`` of the finished job to ``dest`` (a file or a directory)."""
        data = self._outputs.get(self._output_key(), path)
        if data is None:
            raise SandrunError(f"job {self.id} has no output {path!r} (finished? expired? "
                               "see result().outputs)")
        target = Path(dest)
        if target.is_dir():
            target = target / Path(path).name
        target.write_bytes(data)
        return target


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
