"""The manager's typed call for each built-in hook, so call sites never spell hook names.

``manager.on_submit(job, ctx)`` returns the Job the chain ended with;
``execute_hook("name", ...)`` stays for custom hooks (``declare_hooks``,
``custom_hooks``). Each method is one line over the manager's single dispatch
entry point, so the chain semantics (priority order, replacement, isolation of
faults, control-flow exceptions) are the same for every hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from worker.models import Execution, Job, JobResult, WorkerInfo
    from worker.models.builder import JobBuilder
    from worker.plugin.context import (
        BuildContext,
        ErrorContext,
        ExecutionContext,
        PublishContext,
        ResultContext,
        SubmissionContext,
        WorkerContext,
    )
    from worker.protocol import Publication

T = TypeVar("T")


class HookCalls(ABC):
    """Typed per-hook entry points; the manager supplies ``execute_hook``."""

    @abstractmethod
    def execute_hook(self, name: str, data: Any, context: Any = None) -> Any:
        """Run hook ``name`` over ``data`` and return the (possibly replaced) data."""

    def on_build(self, builder: JobBuilder[T], context: BuildContext) -> JobBuilder[T]:
        """``on_build`` in the producer: the builder with every plugin's defaults set."""
        return cast("JobBuilder[T]", self.execute_hook("on_build", builder, context))

    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        """``on_submit`` in the producer: the Job to publish (SubmissionRejected vetoes)."""
        return cast("Job", self.execute_hook("on_submit", job, context))

    def on_publish(self, publication: Publication, context: PublishContext) -> Publication:
        """``on_publish`` just before a message is sent: the Publication to send
        (PublicationHeld: a plugin took it over; do not send it)."""
        return cast("Publication", self.execute_hook("on_publish", publication, context))

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        """``on_execute`` in the pool process; JobRejected, JobDeferred or
        DuplicateDelivery raised by a plugin reach the caller."""
        self.execute_hook("on_execute", execution, context)

    def on_result(self, result: JobResult, context: ResultContext) -> JobResult:
        """``on_result`` before storing: the JobResult to store."""
        return cast("JobResult", self.execute_hook("on_result", result, context))

    def on_error(self, error: BaseException, context: ErrorContext) -> BaseException:
        """``on_error``: the error to report (RetryRequested reaches the caller)."""
        replaced = self.execute_hook("on_error", error, context)
        return replaced if isinstance(replaced, BaseException) else error

    def on_worker_start(self, worker: WorkerInfo, context: WorkerContext) -> WorkerInfo:
        """``on_worker_start`` in a worker's main process: what the worker advertises
        (StartupRefused stops the worker)."""
        return cast("WorkerInfo", self.execute_hook("on_worker_start", worker, context))

    def on_worker_stop(self, worker: WorkerInfo, context: WorkerContext) -> None:
        """``on_worker_stop`` in a worker's main process as it shuts down."""
        self.execute_hook("on_worker_stop", worker, context)
