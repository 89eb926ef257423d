"""The hook specification: what a plugin is and which hooks it may implement.

A plugin is a subclass of :class:`Plugin` that overrides some of its documented
no-op hook methods. Hooks may be plain methods or ``async def``. A hook that
returns a value replaces the data for the next plugin in the chain; returning
``None`` leaves it unchanged. Per-method priority, ``once`` and ``timeout`` come
from the :func:`hook` decorator; the class attributes ``priority`` and
``hook_timeout`` are the plugin's defaults.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from worker.errors import InvalidPlugin

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

    from worker.models import Execution, Job, JobResult, WorkerInfo
    from worker.models.builder import JobBuilder
    from worker.plugin.context import (
        BuildContext,
        ErrorContext,
        ExecutionContext,
        PluginContext,
        PublishContext,
        ResultContext,
        SubmissionContext,
        WorkerContext,
    )
    from worker.protocol import Publication

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
HOOK_OPTIONS_ATTR = "__sandrun_hook__"

#: Hooks the manager dispatches through chains, with the arguments each takes.
CHAIN_HOOKS: dict[str, tuple[str, ...]] = {
    "on_build": ("builder", "context"),
    "on_submit": ("job", "context"),
    "on_publish": ("publication", "context"),
    "on_execute": ("execution", "context"),
    "on_result": ("result", "context"),
    "on_error": ("error", "context"),
    "on_worker_start": ("worker", "context"),
    "on_worker_stop": ("worker", "context"),
}
#: Hooks the manager calls itself, once per plugin, when it loads and unloads it.
LIFECYCLE_HOOKS: dict[str, tuple[str, ...]] = {"on_init": ("context",), "on_destroy": ()}
#: Arguments of every custom hook: the data and the caller's context.
CUSTOM_HOOK_ARGS = ("data", "context")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class HookOptions:
    """Per-method dispatch options set by :func:`hook`."""

    priority: int | None = None
    once: bool = False
    timeout: float | None = None


def hook(*, priority: int | None = None, once: bool = False,
         timeout: float | None = None) -> Callable[[F], F]:
    """Set the priority (higher runs first), ``once`` (run a single time) or ``timeout``
    (seconds before a call is abandoned, 0: no limit; default: the plugin's
    ``hook_timeout``, else ``SANDRUN_HOOK_TIMEOUT``) of one hook."""

    def mark(fn: F) -> F:
        setattr(fn, HOOK_OPTIONS_ATTR, HookOptions(priority, once, timeout))
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class PluginDependency:
    """Another plugin this one needs: ``PluginDependency("metrics", ">=1.0", optional=True)``."""

    name: str
    version: str | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise InvalidPlugin(f"dependency name {self.name!r} is not a valid plugin name")
        if self.version is not None:
            # here, not at the top: it imports packaging.tags (and subprocess), which
            # only plugins that declare versioned dependencies need
            from packaging.specifiers import InvalidSpecifier, SpecifierSet

            try:
                SpecifierSet(self.version)
            except InvalidSpecifier as exc:
                raise InvalidPlugin(
                    f"dependency {self.name!r}: version {self.version!r} is not a version "
                    "specifier; write one like '>=2.0' or '>=1.2,<2'") from exc

    @property
    def specifier(self) -> SpecifierSet:
        """The version requirement (empty: any version)."""
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(self.version or "")


class PluginManifest(BaseModel):
    """Metadata for discovery and validation; ``configuration`` is a pydantic model class.

    ``name`` and ``version`` have one source, the plugin class's attributes: leave them
    out here (None). A manifest that states them anyway must agree with the class.

    ``apis``: every hook the plugin implements (spec hooks other than on_init and
    on_destroy, and custom hooks); loading refuses a plugin whose methods differ.
    ``permissions``: what its hooks may do, from :data:`worker.plugin.permissions.PERMISSIONS`.
    Left as None, either is *undeclared*: apis are taken from the methods, and an
    undeclared plugin gets every permission (plugins of installed packages must
    declare both)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    name: str | None = None
    version: str | None = None
    description: str = ""
    author: str = ""
    license: str = ""
    keywords: list[str] = Field(default_factory=list)
    dependencies: list[PluginDependency] = Field(default_factory=list)
    apis: list[str] | None = None
    permissions: list[str] | None = None
    configuration: type[BaseModel] | None = None


class Plugin:
    """Base class of every plugin. Override the hooks you need; all are no-ops here.

    Class attributes: ``name`` (lowercase), ``version`` (PEP 440), ``priority``
    (default for all hooks; higher runs first), ``hook_timeout`` (seconds any of
    its hook calls may run before it is abandoned; None: the host's
    ``SANDRUN_HOOK_TIMEOUT``, 0: no limit), ``dependencies``, ``manifest``, and
    ``custom_hooks`` (names of extra hooks this plugin declares for other plugins
    to implement and the host to call through ``execute_hook``).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.0.0"
    priority: ClassVar[int] = 0
    hook_timeout: ClassVar[float | None] = None
    dependencies: ClassVar[Sequence[PluginDependency]] = ()
    manifest: ClassVar[PluginManifest | None] = None
    custom_hooks: ClassVar[Sequence[str]] = ()

    def on_init(self, context: PluginContext) -> Awaitable[None] | None:
        """Called once when the plugin is loaded in a process (producer client, worker
        main process, each worker pool process), with its validated config, logger,
        metrics and storage."""
        return None

    def on_destroy(self) -> Awaitable[None] | None:
        """Called once when the plugin is unloaded or its process stops; release resources."""
        return None

    def on_build(self, builder: JobBuilder[Any], context: BuildContext
                 ) -> JobBuilder[Any] | Awaitable[JobBuilder[Any] | None] | None:
        """Called when a client makes a job builder; return a builder with defaults set."""
        return None

    def on_submit(self, job: Job, context: SubmissionContext) -> Job | Awaitable[Job | None] | None:
        """Called in the producer before the job is published; return a new Job to replace
        it, or raise :class:`~worker.errors.SubmissionRejected` to veto it."""
        return None

    def on_publish(self, publication: Publication, context: PublishContext
                   ) -> Publication | Awaitable[Publication | None] | None:
        """Called in the producer (and wherever a finished message is about to be sent)
        with the final Publication, once per message; return a new Publication to
        replace it (e.g. signed headers), or store it yourself and raise
        :class:`~worker.errors.PublicationHeld` to take it over (hold it): it is not
        sent, and later hooks do not see it. A message sent again later (a held job
        released by ``sandrun beat``, a deferred or retried task) goes out as it was,
        without a second ``on_publish``. The ``auth`` plugin signs at priority -2000:
        change the message above it, take it over below it."""
        return None

    def on_execute(self, execution: Execution, context: ExecutionContext) -> Awaitable[None] | None:
        """Called in the worker pool process just before a task runs (``execution.job``
        is the Job for ``sandrun.run_job``, None for other tasks); raise
        :class:`~worker.errors.JobRejected` to stop it (status rejected, never run)."""
        return None

    def on_result(self, result: JobResult, context: ResultContext
                  ) -> JobResult | Awaitable[JobResult | None] | None:
        """Called in the worker before the result is stored; return a new JobResult to
        change what is stored."""
        return None

    def on_error(self, error: BaseException, context: ErrorContext
                 ) -> BaseException | Awaitable[BaseException | None] | None:
        """Called when an operation failed; return a replacement exception, or None, or
        raise :class:`~worker.errors.RetryRequested` to run the task again later."""
        return None

    def on_worker_start(self, worker: WorkerInfo, context: WorkerContext
                        ) -> WorkerInfo | Awaitable[WorkerInfo | None] | None:
        """Called in a worker's main process before its pool starts (prepare shared
        resources, start an exporter); return a WorkerInfo with ``extra`` entries to
        advertise, or raise :class:`~worker.errors.StartupRefused` to stop the worker."""
        return None

    def on_worker_stop(self, worker: WorkerInfo, context: WorkerContext) -> None:
        """Called in a worker's main process when it shuts down."""
        return None
