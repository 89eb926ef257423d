"""The producer API: ``Sandrun`` enqueues jobs, ``JobExecution`` follows one.

::

    with Sandrun.create(plugins=["defaults"]) as client:
        run = client.job().code("print(1)").timeout(30).submit()
        result = run.wait(timeout=60)

Submitting runs ``on_build`` (when a builder is made) and ``on_submit`` in this
process, checks the payment against the pricing table, builds the message and
runs ``on_publish`` over it (signing; a plugin may take it over and hold it),
then publishes it to the job's queue. Publishing rides out short broker outages with a bounded,
documented tenacity policy (Celery's own publish retry is off, so the two are
never stacked) and raises :class:`~worker.errors.BrokerUnavailable` after it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
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
from worker.client.follow import LogLine, follow, result_lines
from worker.errors import (
    ConfigurationError,
    InvalidJob,
    PublicationHeld,
    SandrunError,
    WaitTimeout,
)
from worker.models import ErrorInfo, Job, JobResult, Progress
from worker.models.builder import JobBuilder
from worker.plugin.context import BuildContext, PublishContext, SubmissionContext
from worker.plugin.loader import PluginRef, PluginSpec, parse_plugin_specs
from worker.plugin.manager import PluginManager
from worker.protocol import PROGRESS_STATE, RUN_JOB, SUBMITTED_HEADER, Publication, job_queue
from worker.settings import Settings, load_settings
from worker.stores.deadletter import dead_letter_store_for
from worker.stores.livelogs import LiveLog
from worker.stores.outputs import OutputStore, output_store_for

WAIT_SLICE = 1.0
STATE_NAMES = {"PENDING": "queued", "RECEIVED": "queued", "STARTED": "running",
               "PROGRESS": "running", "RETRY": "retrying", "REVOKED": "cancelled",
               "FAILURE": "failed"}


class JobExecution:
    """A handle on one submitted job."""

    def __init__(self, job_id: str, app: Celery, outputs: OutputStore,
                 live: LiveLog | None = None) -> None:
        self.id = job_id
        self._app = app
        self._outputs = outputs
        self._live = live

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

    def cancel(self) -> None:
        """Revoke the job; a running one is terminated (its whole process tree with it)."""
        self._app.control.revoke(self.id, terminate=True, signal="SIGTERM")

    def download(self, path: str, dest: str | Path) -> Path:
        """Write output ``path`` of the finished job to ``dest`` (a file or a directory)."""
        data = self._outputs.get(self.id, path)
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
        self._outputs = output_store_for(str(app.conf.result_backend))
        backend = redis_client(str(app.conf.result_backend))
        self._live = LiveLog(backend) if backend is not None else None
        self.publisher = Publisher(app, settings.publish_retry_seconds)

    @classmethod
    def create(cls, *, plugins: Sequence[PluginSpec | PluginRef] | None = None,
               broker_url: str | None = None, result_backend: str | None = None,
               settings: Settings | None = None) -> Sandrun:
        """A client for ``broker_url`` (default: the environment, or the embedded broker)
        with ``plugins`` (default: ``SANDRUN_PLUGINS``)."""
        settings = settings or load_settings()
        app = make_app(broker_url, result_backend)
        manager = PluginManager(dead_letters=dead_letter_store_for(str(app.conf.result_backend)),
                                hook_timeout=settings.hook_timeout)
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

    def submit(self, job: Job) -> JobExecution:
        """Run ``on_submit``, check the payment, run ``on_publish`` and publish what it
        returns (unless a plugin took the message over); return a handle on the job."""
        started = time.perf_counter()
        if self.settings.pricing is not None:
            self.settings.pricing.check_payment(job)
        queue = job_queue(job, self.settings.default_queue)
        ctx = SubmissionContext(producer=self.producer, queue=queue, job_id=job.id)
        job = self.manager.on_submit(job, ctx)
        if self.settings.pricing is not None:
            self.settings.pricing.check_payment(job)
        queue = job_queue(job, self.settings.default_queue)
        if job.timeout > self.settings.max_job_timeout:
            raise InvalidJob([("timeout", f"{job.timeout:g}s is longer than this deployment "
                               f"allows ({self.settings.max_job_timeout:g}s, "
                               "SANDRUN_MAX_JOB_TIMEOUT)")], source=f"job {job.id}")
        publication = Publication(
            task=RUN_JOB, task_id=job.id, queue=queue,
            args=[job.model_dump(mode="json", exclude_defaults=True)],
            eta=job.scheduled_time, headers={**ctx.headers,
                                             SUBMITTED_HEADER: f"{time.time():.6f}"})
        try:
            publication = self.manager.on_publish(publication, PublishContext(
                job=job, producer=self.producer, metadata=ctx.metadata))
        except PublicationHeld:
            pass  # a plugin stored the message and sends it later (it logs that itself)
        else:
            self.publish(publication)
        ctx.duration = time.perf_counter() - started
        return JobExecution(job.id, self.app, self._outputs, self._live)

    def publish(self, publication: Publication) -> None:
        """Send one message to the broker as it is (no hooks), riding out short outages.

        For messages built by hand (a task other than ``run_job``, signed with the
        ``auth`` plugin's ``sign``); jobs should go through :meth:`submit`."""
        if publication.eta is not None:
            self._check_eta(publication.eta)
        self.publisher.publish(publication)

    def _check_eta(self, when: datetime) -> None:
        horizon = int(self.app.conf.broker_transport_options.get("visibility_timeout", 3600))
        if (when - datetime.now(UTC)).total_seconds() > horizon:
            raise ConfigurationError(
                f"scheduled_time {when.isoformat()} is further out than the broker visibility "
                f"timeout ({horizon}s); the job could run twice. Load the scheduling plugin, "
                "which holds far-future jobs until they are due")

    def execution(self, job_id: str) -> JobExecution:
        """A handle on a job submitted earlier (by id)."""
        return JobExecution(job_id, self.app, self._outputs, self._live)

    def close(self) -> None:
        """Unload plugins (``on_destroy``) and release broker connections."""
        self.manager.close()
        self.app.close()

    def __enter__(self) -> Sandrun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
