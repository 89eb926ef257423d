"""An immutable, fluent builder of :class:`~worker.models.Job`.

Every method returns a new builder, so a builder can be shared as a template
(``on_build`` hooks return one with defaults set) without one use leaking into
another::

    base = JobBuilder().interpreter("python3").timeout(30)
    job = base.code("print(1)").args(["-v"]).env({"MODE": "fast"}).build()

``build()`` validates and raises pydantic's ``ValidationError`` naming the
field and the rule. The client binds a builder to itself so ``.submit()`` works.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from worker.models.consensus import Consensus
from worker.models.job import GPURequirements, Job

T = TypeVar("T")


class JobBuilder(Generic[T]):
    """Collects job fields; never mutated after construction."""

    __slots__ = ("_fields", "_submit")

    def __init__(self, fields: Mapping[str, Any] | None = None,
                 submit: Callable[..., T] | None = None) -> None:
        self._fields: Mapping[str, Any] = MappingProxyType(dict(fields or {}))
        self._submit = submit

    def _with(self, **changes: Any) -> JobBuilder[T]:
        return JobBuilder({**self._fields, **changes}, self._submit)

    def with_fields(self, fields: Mapping[str, Any]) -> JobBuilder[T]:
        """Set many fields at once (e.g. those of a manifest), replacing earlier values."""
        return JobBuilder({**self._fields, **fields}, self._submit)

    @property
    def fields(self) -> Mapping[str, Any]:
        """The fields set so far (read-only)."""
        return self._fields

    def code(self, source: str) -> JobBuilder[T]:
        """Run inline ``source`` (clears an entrypoint)."""
        return JobBuilder({**{k: v for k, v in self._fields.items() if k != "entrypoint"},
                           "code": source}, self._submit)

    def entrypoint(self, path: str) -> JobBuilder[T]:
        """Run the file ``path`` among the job's files (clears inline code)."""
        return JobBuilder({**{k: v for k, v in self._fields.items() if k != "code"},
                           "entrypoint": path}, self._submit)

    def file(self, path: str, content: str | bytes, *, executable: bool = False) -> JobBuilder[T]:
        """Add one file; bytes are sent base64-encoded."""
        entry: dict[str, Any] = {"content": content, "executable": executable}
        if isinstance(content, bytes):
            entry = {**entry, "content": base64.b64encode(content).decode(), "encoding": "base64"}
        return self._with(files={**self._fields.get("files", {}), path: entry})

    def interpreter(self, name: str) -> JobBuilder[T]:
        return self._with(interpreter=name)

    def args(self, args: Sequence[str]) -> JobBuilder[T]:
        return self._with(args=list(args))

    def env(self, env: Mapping[str, str]) -> JobBuilder[T]:
        """Add environment variables (merged with those set before)."""
        return self._with(env={**self._fields.get("env", {}), **env})

    def timeout(self, seconds: float) -> JobBuilder[T]:
        return self._with(timeout=seconds)

    def memory(self, mb: int) -> JobBuilder[T]:
        return self._with(memory_mb=mb)

    def cpu_seconds(self, seconds: int) -> JobBuilder[T]:
        return self._with(cpu_seconds=seconds)

    def outputs(self, patterns: Sequence[str]) -> JobBuilder[T]:
        return self._with(outputs=list(patterns))

    def requirements(self, *names: str) -> JobBuilder[T]:
        """Packages the worker installs from its wheel cache (``"tomli>=2"``; names and
        specifiers only), added to those given before."""
        before = self._fields.get("requirements") or []
        if isinstance(before, str):
            raise ValueError(f"requirements come from the file {before!r}; give names or a "
                             "file, not both")
        return self._with(requirements=[*before, *names])

    def environment(self, name: str) -> JobBuilder[T]:
        """Run in the worker's prepared environment ``name`` (``sandrun environments``)."""
        return self._with(environment=name)

    def gpu(self, type: str | None = None, **requirements: Any) -> JobBuilder[T]:
        """Require a GPU (``type`` like "a100"; other fields as in GPURequirements)."""
        return self._with(gpu=GPURequirements.model_validate({"type": type, **requirements}))

    def payment(self, amount: str, currency: str) -> JobBuilder[T]:
        return self._with(payment={"amount": amount, "currency": currency})

    def consensus(self, level: Consensus) -> JobBuilder[T]:
        return self._with(consensus=level)

    def priority(self, value: int) -> JobBuilder[T]:
        return self._with(priority=value)

    def schedule(self, at: datetime) -> JobBuilder[T]:
        return self._with(scheduled_time=at)

    def deadline(self, at: datetime) -> JobBuilder[T]:
        """Never start the job after ``at`` (timezone-aware); it ends ``expired`` then."""
        return JobBuilder({**{k: v for k, v in self._fields.items() if k != "expires_in"},
                           "deadline": at}, self._submit)

    def expires_in(self, duration: float | str | timedelta) -> JobBuilder[T]:
        """Never start the job later than ``duration`` (seconds, ``"30s"``, ``"5m"``)
        after it is built (at ``submit()``); it ends ``expired`` then."""
        return JobBuilder({**{k: v for k, v in self._fields.items() if k != "deadline"},
                           "expires_in": duration}, self._submit)

    def queue(self, name: str) -> JobBuilder[T]:
        return self._with(queue=name)

    def labels(self, labels: Mapping[str, str]) -> JobBuilder[T]:
        """Add labels (merged with those set before)."""
        return self._with(labels={**self._fields.get("labels", {}), **labels})

    def defaults(self, **fields: Any) -> JobBuilder[T]:
        """Set fields that are not set yet (what ``on_build`` hooks use)."""
        return JobBuilder({**fields, **self._fields}, self._submit)

    def build(self) -> Job:
        """Validate the fields into a Job."""
        return Job.model_validate(dict(self._fields))

    def submit(self, *, correlation_id: str | None = None, tenant: str | None = None,
               baggage: Mapping[str, str] | None = None) -> T:
        """Build and submit through the client this builder came from; the job's
        correlation id, tenant and baggage as ``Sandrun.submit`` takes them."""
        if self._submit is None:
            raise TypeError("this builder is not bound to a client; make it with client.job()")
        context = {key: value for key, value in (("correlation_id", correlation_id),
                                                 ("tenant", tenant), ("baggage", baggage))
                   if value is not None}
        return self._submit(self.build(), **context)
