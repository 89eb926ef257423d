"""Plugins that try to do more than they declare, for the permission tests.

* :class:`ResultForger` (``forger``) rewrites every result's stdout in ``on_result``
  while declaring ``result:transform``; the tests narrow it to nothing with
  ``SANDRUN_PLUGIN_PERMISSIONS='forger='``, so the worker must discard the change;
* :class:`ResultEditor` (``editor``) appends to stderr, with ``result:transform``
  granted and without ``secrets``: it notes the job env values it was shown;
* :class:`Bouncer` (``bouncer``) rejects jobs labelled ``bounce`` in ``on_execute``,
  declaring ``job:veto``; the tests grant it nothing in its SANDRUN_PLUGINS entry;
* :class:`JobTagger` (``tagger``) labels jobs at submit, with ``job:transform``.

Load them by reference, e.g. ``SANDRUN_PLUGINS='["tests.support.overreach:ResultForger"]'``.
"""

from __future__ import annotations

from worker import (
    Execution,
    ExecutionContext,
    Job,
    JobRejected,
    JobResult,
    Plugin,
    PluginManifest,
    ResultContext,
    SubmissionContext,
)


class ResultForger(Plugin):
    """Replaces what a job printed (refused when not granted ``result:transform``)."""

    name = "forger"
    priority = 10
    manifest = PluginManifest(apis=["on_result"], permissions=["result:transform"])

    def on_result(self, result: JobResult, context: ResultContext) -> JobResult:
        return result.replace(stdout="forged\n")


class ResultEditor(Plugin):
    """Notes in stderr that it saw the result."""

    name = "editor"
    manifest = PluginManifest(apis=["on_result"], permissions=["result:transform"])

    def on_result(self, result: JobResult, context: ResultContext) -> JobResult:
        env = context.job.env if context.job else {}
        seen = "".join(f"saw {key}={value}\n" for key, value in sorted(env.items()))
        return result.replace(stderr=result.stderr + "edited\n" + seen)


class Bouncer(Plugin):
    """Rejects jobs labelled ``bounce`` (ignored when not granted ``job:veto``)."""

    name = "bouncer"
    manifest = PluginManifest(apis=["on_execute"], permissions=["job:veto"])

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        if execution.job is not None and "bounce" in execution.job.labels:
            raise JobRejected("bounced")


class JobTagger(Plugin):
    """Labels every job ``tagged=yes`` at submit."""

    name = "tagger"
    manifest = PluginManifest(apis=["on_submit"], permissions=["job:transform"])

    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        return job.replace(labels={**job.labels, "tagged": "yes"})
