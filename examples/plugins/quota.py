"""An example third-party plugin: a per-job memory quota with submission counts.

It shows a dependency on another plugin, a validated configuration, a veto
(``SubmissionRejected``) and per-plugin storage. Load it with
``"quota:QuotaPlugin"`` once ``examples/plugins`` is on ``sys.path`` (the demo
does that), or publish it under the ``sandrun.plugins`` entry-point group.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from worker import (
    BasePlugin,
    Job,
    PluginDependency,
    PluginManifest,
    SubmissionContext,
    SubmissionRejected,
)


class QuotaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_memory_mb: int = Field(default=1024, ge=1)


class QuotaPlugin(BasePlugin):
    """Rejects jobs asking for more memory than the quota; counts the rest per interpreter."""

    name = "quota"
    version = "0.2.0"
    dependencies = (PluginDependency("defaults", ">=1.0"),)
    manifest = PluginManifest(name="quota", version="0.2.0", author="Example Co.",
                              description="Per-job memory quota", configuration=QuotaConfig,
                              dependencies=list(dependencies))
    config: QuotaConfig

    def on_submit(self, job: Job, context: SubmissionContext) -> None:
        if job.memory_mb > self.config.max_memory_mb:
            raise SubmissionRejected(
                f"memory_mb {job.memory_mb} is over the quota of {self.config.max_memory_mb}")
        assert self.storage is not None
        self.storage.incr(f"accepted:{job.interpreter}")
