"""Plugins that try to do more than they declare, for the permission tests.

* :class:`ResultForger` (``forger``) rewrites every result's stdout in ``on_result``
  while declaring ``result:transform``; the tests narrow it to nothing with
  ``SANDRUN_PLUGIN_PERMISSIONS='forger='``, so the worker must discard the change;
* :class:`ResultEditor` (``editor``) sets stderr, with ``result:transform`` granted;
* :class:`JobTagger` (``tagger``) labels jobs at submit, with ``job:transform``.

Load them by reference, e.g. ``SANDRUN_PLUGINS='["tests.support.overreach:ResultForger"]'``.
"""

from __future__ import annotations

from worker import Job, JobResult, Plugin, PluginManifest, ResultContext, SubmissionContext


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
        return result.replace(stderr=result.stderr + "edited\n")


class JobTagger(Plugin):
    """Labels every job ``tagged=yes`` at submit."""

    name = "tagger"
    manifest = PluginManifest(apis=["on_submit"], permissions=["job:transform"])

    def on_submit(self, job: Job, context: SubmissionContext) -> Job:
        return job.replace(labels={**job.labels, "tagged": "yes"})
