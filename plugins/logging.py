"""The ``logging`` plugin: one structured log pipeline per process, events per job step.

Options as in the seed: ``format`` json | text | structured (structured), ``level``
(info), ``outputs`` (``stderr``, ``stdout`` or file paths), ``include_context``
(true). It configures structlog once per process that hosts plugins (through
:mod:`worker.logs`, the one place that configures logging) so Celery's own
records come out in the same format; every line logged while a job runs
carries job_id, task_id, attempt, queue and node, and the job's correlation_id,
tenant and baggage when it has them. It logs ``job_submitted`` (with the
correlation id, so a producer's line finds the worker's),
``job_started`` and ``operation_failed`` with their fields; the worker itself logs
``job_finished`` (sizes and timings, never the job's output) for every job, with
or without this plugin.
Run workers with ``celery -q`` (``sandrun worker`` does) so the banner, which is
not a log record, stays out of a JSON stream; the one line Celery still prints
outside logging is its ``worker: Warm shutdown`` notice on stderr.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker import (
    LEVELS,
    BasePlugin,
    ErrorContext,
    Execution,
    ExecutionContext,
    Job,
    PluginContext,
    PluginManifest,
    SubmissionContext,
    configure_logging,
)


class LoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["json", "text", "structured"] = "structured"
    level: str = Field(default="info", pattern="^(?i)(debug|info|warn|warning|error|critical)$")
    outputs: list[str] = Field(default_factory=lambda: ["stderr"], min_length=1)
    include_context: bool = True


class LoggingPlugin(BasePlugin):
    """Logs each step of a job's life as a structured event."""

    name = "logging"
    version = "1.0.0"
    priority = 50
    hook_timeout = 0  # bounded hooks: run inline, no timeout thread (see worker.plugin.dispatch)
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="Structured logs (structlog) for workers and producers",
        keywords=["logging", "structlog"], configuration=LoggingConfig,
        apis=["on_submit", "on_execute", "on_error"], permissions=[])

    def __init__(self, options: LoggingConfig | None = None) -> None:
        self._options = options

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or LoggingConfig()
        assert self.options.level.lower() in LEVELS
        configure_logging(self.options.level, self.options.format, self.options.outputs,
                          self.options.include_context, by_plugin=True)
        self.logger.debug("logging_configured", format=self.options.format,
                          outputs=self.options.outputs)

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        extra: dict[str, Any] = {"queue": context.queue, "producer": context.producer,
                                 "correlation_id": context.correlation_id}
        self.logger.info("job_submitted", job_id=job.id, interpreter=job.interpreter,
                         gpu=job.gpu.type if job.gpu else None, consensus=job.consensus,
                         payment=job.payment.model_dump() if job.payment else None,
                         **(extra if self.options.include_context else {}))

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        self.logger.info("job_started", task=execution.task, pool_id=context.pool_id,
                         deliveries=context.deliveries)

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        self.logger.error("operation_failed", operation=context.operation,
                          error_type=type(error).__name__, error=str(error),
                          attempt=context.attempt)


def logging_plugin(**options: Any) -> LoggingPlugin:
    """``logging_plugin(format="json", level="info", outputs=["/var/log/sandrun.jsonl"])``."""
    return LoggingPlugin(LoggingConfig(**options) if options else None)
