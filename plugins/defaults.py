"""The ``defaults`` plugin: fleet-wide defaults for jobs, set in one place.

Producers of many teams submit to one fleet; operators want every job to carry a
few labels (team, environment), land on a default queue and get sensible limits
without asking each producer to remember them. Configure it once::

    SANDRUN_PLUGINS='[{"name": "defaults", "config":
        {"labels": {"env": "prod"}, "queue": "batch", "timeout": 120}}]'

``on_build`` fills fields the producer's builder has not set (limits included);
``on_submit`` fills labels and the queue on jobs submitted without a builder.
A value the producer set always wins.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker import (
    MAX_CPU_SECONDS,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_SECONDS,
    BasePlugin,
    BuildContext,
    Job,
    JobBuilder,
    PluginManifest,
    SubmissionContext,
)


class DefaultsConfig(BaseModel):
    """What to fill in when a job leaves it unset."""

    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str] = Field(default_factory=dict, description="labels every job carries")
    queue: str | None = Field(default=None, description="queue for jobs that name none")
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)
    memory_mb: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MB)
    cpu_seconds: int | None = Field(default=None, ge=1, le=MAX_CPU_SECONDS)
    priority: int | None = Field(default=None, ge=0, le=9)


class DefaultsPlugin(BasePlugin):
    """Fills unset job fields from configuration; runs before other plugins."""

    name = "defaults"
    version = "1.0.0"
    priority = 100
    hook_timeout = 0  # bounded hooks: run inline, no timeout thread (see worker.plugin.dispatch)
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="Fleet-wide default labels, queue and limits for jobs",
        keywords=["defaults", "labels"], apis=["on_build", "on_submit"],
        permissions=["job:transform"], configuration=DefaultsConfig)
    config: DefaultsConfig

    def _builder_defaults(self) -> dict[str, Any]:
        return self.config.model_dump(exclude_none=True, exclude={"labels"})

    def on_build(self, builder: JobBuilder[Any], context: BuildContext) -> JobBuilder[Any]:
        builder = builder.defaults(**self._builder_defaults())
        if self.config.labels:
            builder = builder.defaults(labels={})
            merged = {**self.config.labels, **builder.fields["labels"]}
            builder = builder.labels(merged)
        return builder

    def on_submit(self, job: Job, context: SubmissionContext) -> Job | None:
        labels = {**self.config.labels, **job.labels}
        queue = job.queue or self.config.queue
        if labels == job.labels and queue == job.queue:
            return None
        return job.replace(labels=labels, queue=queue)
