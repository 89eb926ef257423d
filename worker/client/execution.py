"""``JobExecution``: the producer's handle on one submitted job (status, result, wait,
live logs and progress, cancel, outputs), made by :class:`~worker.client.client.Sandrun`
at submit or from a job id (``Sandrun.execution``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from pydantic import ValidationError

from worker.client.cancel import cancel_job
from worker.client.follow import LogLine, follow, result_lines
from worker.errors import (
    SandrunError,
    WaitTimeout,
)
from worker.models import ErrorInfo, JobContext, JobResult, Progress
from worker.protocol import (
    PROGRESS_STATE,
)
from worker.stores.livelogs import LiveLog
from worker.stores.outputs import OutputStore

WAIT_SLICE = 1.0
STATE_NAMES = {"PENDING": "queued", "RECEIVED": "queued", "STARTED": "running",
               "PROGRESS": "running", "RETRY": "retrying", "REVOKED": "cancelled",
               "FAILURE": "failed"}


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
