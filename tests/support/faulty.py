"""Plugins that misbehave on purpose, for the plugin-fault reliability tests.

* :class:`RaisingPlugin` (``faulty-raise``) raises in every hook it may have;
* :class:`HangingPlugin` (``faulty-hang``) sleeps in ``on_execute`` far longer
  than the short hook timeout the tests configure (``SANDRUN_HOOK_TIMEOUT``);
* :class:`FailingAsyncPlugin` (``faulty-async``) has async hooks that fail after
  an await.

Load them by reference, e.g. ``SANDRUN_PLUGINS='["tests.support.faulty:HangingPlugin"]'``.
None of them may stop a job from completing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from worker import (
    BasePlugin,
    BuildContext,
    ErrorContext,
    ExecutionContext,
    JobBuilder,
    JobResult,
    ResultContext,
    SubmissionContext,
)
from worker.models import Execution, Job, WorkerInfo
from worker.plugin.context import WorkerContext

#: How long the hanging hook sleeps: far past any timeout the tests set.
HANG_SECONDS = 120


class PluginFault(RuntimeError):
    """What the faulty plugins raise, so logs show it was on purpose."""


class RaisingPlugin(BasePlugin):
    name = "faulty-raise"
    version = "1.0.0"

    def on_build(self, builder: JobBuilder[Any], context: BuildContext) -> None:
        raise PluginFault("on_build always fails")

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        raise PluginFault("on_submit always fails")

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        raise PluginFault("on_execute always fails")

    def on_result(self, result: JobResult, context: ResultContext) -> None:
        raise PluginFault("on_result always fails")

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        raise PluginFault("on_error always fails")

    def on_worker_start(self, worker: WorkerInfo, context: WorkerContext) -> None:
        raise PluginFault("on_worker_start always fails")

    def on_worker_stop(self, worker: WorkerInfo, context: WorkerContext) -> None:
        raise PluginFault("on_worker_stop always fails")

    def on_destroy(self) -> None:
        raise PluginFault("on_destroy always fails")


class HangingPlugin(BasePlugin):
    name = "faulty-hang"
    version = "1.0.0"

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        time.sleep(HANG_SECONDS)


class FailingAsyncPlugin(BasePlugin):
    name = "faulty-async"
    version = "1.0.0"

    async def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        await asyncio.sleep(0)
        raise PluginFault("async on_execute fails after an await")

    async def on_result(self, result: JobResult, context: ResultContext) -> JobResult:
        await asyncio.sleep(0)
        raise PluginFault("async on_result fails after an await")
