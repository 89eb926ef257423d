"""A plugin that records every hook call in its (Redis-backed) storage.

Each event is stored under ``event:<seq>`` with the hook, the task or job id,
the pid and the process role, so tests can check that each hook fired once, in
the right process and in the right order. Job labels steer it:
``veto=1`` makes ``on_execute`` raise JobRejected, ``rewrite=1`` makes
``on_result`` replace stdout.
"""

from __future__ import annotations

import os
from typing import Any

from worker import (
    BasePlugin,
    BuildContext,
    ErrorContext,
    ExecutionContext,
    JobBuilder,
    JobRejected,
    JobResult,
    PluginContext,
    ResultContext,
    SubmissionContext,
)
from worker.models import Execution, Job


class RecordingPlugin(BasePlugin):
    name = "recording"
    version = "1.0.0"

    def _record(self, hook: str, ident: str | None, **extra: Any) -> None:
        assert self.storage is not None
        seq = self.storage.incr("seq")
        self.storage.set(f"event:{seq:06d}", {"hook": hook, "id": ident, "pid": os.getpid(),
                                              **extra})

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self._record("on_init", None)

    def on_destroy(self) -> None:
        self._record("on_destroy", None)

    def on_build(self, builder: JobBuilder[Any], context: BuildContext) -> None:
        self._record("on_build", None)

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        self._record("on_submit", job.id)

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        self._record("on_execute", context.task_id, task=execution.task, attempt=context.attempt)
        if execution.job is not None and execution.job.labels.get("veto"):
            raise JobRejected("vetoed by the recording plugin")

    def on_result(self, result: JobResult, context: ResultContext) -> JobResult | None:
        self._record("on_result", context.task_id, status=result.status)
        if context.job is not None and context.job.labels.get("rewrite"):
            return result.replace(stdout="rewritten by plugin")
        return None

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        self._record("on_error", context.task_id, error=type(error).__name__)
