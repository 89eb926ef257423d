"""A plugin that makes its worker a bad replica: every result it produces is changed
before it is voted on (its stdout gets a line, each output's recorded digest is
replaced), as a broken or dishonest host would. Load it on one worker of a fleet with
``SANDRUN_PLUGINS=[..., "tests.support.corrupt:CorruptPlugin"]``."""

from __future__ import annotations

from worker import BasePlugin, JobResult, ResultContext, hook


class CorruptPlugin(BasePlugin):
    name = "corrupt"
    version = "1.0.0"

    @hook(priority=100)  # before the consensus plugin's vote (-2500)
    def on_result(self, result: JobResult, context: ResultContext) -> JobResult:
        outputs = [o.model_copy(update={"sha256": "0" * 64}) for o in result.outputs]
        return result.replace(stdout=result.stdout + "corrupted\n",
                              outputs=[o.model_dump() for o in outputs])
