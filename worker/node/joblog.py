"""How the end of a delivery is logged: one structured event, never the job's data.

Celery logs every task's end itself, with the whole return value ("Task
sandrun.run_job[...] succeeded in 0.1s: {... 'stdout': ...}") and, for a failure,
the exception with the task's arguments. A job's result holds what the job printed
and a summary of what it wrote, and its arguments hold its code and env values:
none of it belongs in an operator's log store, and worker logs would grow with
job output. So for the app's tasks those records are dropped
(:func:`worker.logs.quiet_celery_task_lines`, installed by :mod:`worker.node.app`)
and the task base class logs one of these instead, after Celery stored the outcome:

* ``job_finished`` (info): a result was stored. For a job: ``status``, ``outcome``,
  ``exit_code``, ``signal``, timings (``execution_time`` and ``cpu_seconds`` in the
  sandbox, ``wall_seconds`` from the delivery reaching the task to its result
  stored), sizes (``memory_peak_bytes``, ``stdout_bytes``, ``stderr_bytes``,
  ``outputs`` and ``output_bytes``, ``truncated``: which of them were cut), and when
  set ``error_type`` with a short ``error``, and ``cost``; ``already_finished`` when
  the delivery found a final result stored and returned it. Never stdout, stderr,
  outputs or env values. A user task: ``status`` only, never its value.
* ``job_failed`` (error): the task raised, Celery stored a failure; ``error_type``
  and a short ``error``, with the traceback only for errors that are not Sandrun's
  own (a bug to look into).
* ``job_retried`` (info): the next attempt was published; ``error_type``, ``error``,
  ``retry_in``.

Each carries the same job_id, task_id, attempt, queue and node fields as the lines
logged while the job ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

import structlog
from pydantic import ValidationError
from structlog.contextvars import bound_contextvars

from worker.errors import SandrunError
from worker.models import JobResult

#: An error message is cut to this many characters: it says what went wrong, not more.
ERROR_CHARS = 200
log = structlog.get_logger("sandrun.task")


def _short(message: str) -> str:
    return message if len(message) <= ERROR_CHARS else message[:ERROR_CHARS] + "..."


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def result_fields(value: Any) -> dict[str, Any]:
    """The ``job_finished`` fields of a ``sandrun.run_job`` result (its stored JSON form):
    what happened and how big it was, never what the job printed or wrote."""
    try:
        result = JobResult.model_validate(value)
    except ValidationError:
        return {"status": "unknown"}
    fields: dict[str, Any] = {
        "status": result.status, "outcome": result.outcome, "exit_code": result.exit_code,
        "signal": result.signal, "execution_time": _seconds(result.execution_time),
        "cpu_seconds": _seconds(result.cpu_seconds), "memory_peak_bytes": result.memory_peak_bytes,
        "stdout_bytes": len(result.stdout.encode()), "stderr_bytes": len(result.stderr.encode()),
        "outputs": len(result.outputs), "output_bytes": sum(o.size for o in result.outputs)}
    truncated = [name for name, cut in (("stdout", result.stdout_truncated),
                                        ("stderr", result.stderr_truncated),
                                        ("outputs", result.outputs_truncated)) if cut]
    if truncated:
        fields["truncated"] = truncated
    if result.error is not None:
        fields.update(error_type=result.error.type, error=_short(result.error.message))
    if result.cost is not None:
        fields["cost"] = f"{result.cost.amount} {result.cost.currency}"
    return fields


def finished(where: Mapping[str, Any], task: str, fields: Mapping[str, Any],
             wall_seconds: float | None) -> None:
    """``job_finished``: the delivery stored a result (``fields``: :func:`result_fields`
    for a job; a user task's value is not logged)."""
    with bound_contextvars(**where):
        log.info("job_finished", task=task, **fields, wall_seconds=wall_seconds)


def failed(where: Mapping[str, Any], task: str, exc: BaseException,
           wall_seconds: float | None) -> None:
    """``job_failed``: Celery stored the task's exception as its result."""
    with bound_contextvars(**where):
        log.error("job_failed", task=task, error_type=type(exc).__name__,
                  error=_short(str(exc)), wall_seconds=wall_seconds,
                  exc_info=None if isinstance(exc, SandrunError) else exc)


def retried(where: Mapping[str, Any], task: str, exc: BaseException, when: Any) -> None:
    """``job_retried``: this attempt failed and the next one is published (``when``: the
    countdown in seconds, or an ETA)."""
    retry_in = float(when) if isinstance(when, Real) else None
    with bound_contextvars(**where):
        log.info("job_retried", task=task, error_type=type(exc).__name__,
                 error=_short(str(exc)), retry_in=retry_in)
