"""The context that travels with a job from its producer to the worker that runs it.

A :class:`JobContext` holds a correlation id (made at submit unless the caller gave
one), the tenant and the producer's baggage (small key/value strings). The client
puts it in the message's headers (:mod:`worker.protocol`), the ``auth`` plugin
signs them with the rest of the message, and the worker hands them to
``ExecutionContext``, binds them into every log line of the job, and keeps them in
its dead letters and its stored result.

On the worker these values come from a message header, which anyone who can write to
the broker can set: every value is bounded in size and restricted to printable
characters that cannot break a log line. :func:`current_job_context` is the context
of the job this thread (or hook thread) is working on, for code such as the
dead-letter store that is handed no context.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, model_validator

from worker.models.limits import FROZEN

#: A correlation id or a tenant: what log processors and label readers can take as is.
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}$")]
BaggageKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
#: Printable ASCII only: no newline or escape sequence reaches a log line.
BaggageValue = Annotated[str, StringConstraints(pattern=r"^[\x20-\x7e]{0,256}$")]
MAX_BAGGAGE_ITEMS = 16
MAX_BAGGAGE_BYTES = 2048


class JobContext(BaseModel):
    """Who and what a job belongs to, as its producer said and its signature covers."""

    model_config = FROZEN
    correlation_id: Token | None = None
    tenant: Token | None = None
    baggage: dict[BaggageKey, BaggageValue] = Field(default_factory=dict,
                                                    max_length=MAX_BAGGAGE_ITEMS)

    @model_validator(mode="after")
    def _bounded(self) -> JobContext:
        size = sum(len(key) + len(value) for key, value in self.baggage.items())
        if size > MAX_BAGGAGE_BYTES:
            raise ValueError(f"baggage holds {size} bytes of keys and values; at most "
                             f"{MAX_BAGGAGE_BYTES} travel with a job")
        return self

    def log_fields(self) -> dict[str, Any]:
        """What is bound into the job's log lines: the fields that are set."""
        fields: dict[str, Any] = {}
        if self.correlation_id is not None:
            fields["correlation_id"] = self.correlation_id
        if self.tenant is not None:
            fields["tenant"] = self.tenant
        if self.baggage:
            fields["baggage"] = dict(self.baggage)
        return fields


EMPTY = JobContext()


def new_correlation_id() -> str:
    """A fresh correlation id (32 hex digits) for a submission whose caller gave none."""
    return uuid.uuid4().hex


_current: ContextVar[JobContext | None] = ContextVar("sandrun_job_context", default=None)


def current_job_context() -> JobContext | None:
    """The context of the job being worked on here (None outside a job)."""
    return _current.get()


@contextmanager
def job_context_bound(context: JobContext) -> Iterator[None]:
    """Make ``context`` :func:`current_job_context` while the block runs."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
