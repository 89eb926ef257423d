"""The tracing seam: spans the host opens around its own steps, for a tracing plugin.

The host never imports OpenTelemetry. It opens spans (a submission, each hook chain
that has handlers, the sandboxed run of a job) through the :class:`Tracer` a plugin
installs with ``PluginContext.install_tracer`` (the ``opentelemetry`` plugin does);
with none installed, :func:`span` of the manager is a shared no-op and a hook chain
pays one ``is None`` check. Attributes are small scalars (ids, names, counts), never a
job's code, env values or output.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

Attributes = Mapping[str, str | int | float | bool]
#: What :meth:`PluginManager.span` returns when no tracer is installed.
NO_SPAN: AbstractContextManager[None] = nullcontext()


class Tracer(Protocol):
    """Opens one span per call, current (parent of spans opened inside it) until the
    ``with`` block ends; an exception leaving the block marks the span as failed."""

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[Any]: ...


def chain_attributes(name: str, data: Any, context: Any) -> dict[str, str]:
    """The span attributes of one hook chain: the hook and the job it acts on."""
    job_id = getattr(context, "job_id", None) or getattr(data, "id", None)
    attributes = {"sandrun.hook": name}
    if job_id is not None:
        attributes["sandrun.job_id"] = str(job_id)
    return attributes
