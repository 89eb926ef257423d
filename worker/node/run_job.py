"""The ``sandrun.run_job`` task: run one Job in the sandbox and describe the result.

The adapter (:class:`~worker.node.taskbase.SandrunTask`) parses the message's Job
once; :class:`RunJobTask` hands that Execution to :func:`run_job`, the body the
lifecycle runs between ``on_execute`` and ``on_result``.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from celery import Celery, Task

from worker.broker.amqp import delivered_queue, redelivery_options, republished_headers
from worker.models import (
    ErrorInfo,
    Execution,
    ExecutionInfo,
    Job,
    JobResult,
    current_job_context,
)
from worker.models.gpus import describe_need
from worker.node import gpuroute, taskrequest
from worker.node.livefeed import JobFeed, job_feed
from worker.node.runtime import Runtime, current
from worker.node.taskbase import SandrunTask
from worker.plugin.context import ExecutionContext
from worker.protocol import GPU_REROUTES_HEADER, QUEUE_BINDING_HEADERS, RUN_JOB, replica_index
from worker.sandbox.executor import run_in_sandbox
from worker.sandbox.gpu import allocate, suitable

STATUS_BY_OUTCOME = {"completed": "completed", "timeout": "timeout"}


def _refuse(job: Job, outcome: str, message: str) -> JobResult:
    return JobResult(id=job.id, status="failed", outcome=outcome,
                     error=ErrorInfo(type="Unsatisfiable", message=message))


def _span_attributes(job: Job) -> dict[str, str]:
    """The sandboxed run's span attributes: the job, and its correlation id and tenant."""
    attributes = {"sandrun.job_id": job.id, "sandrun.interpreter": job.interpreter or ""}
    travelled = current_job_context()
    if travelled is not None:
        for key, value in (("correlation_id", travelled.correlation_id),
                           ("tenant", travelled.tenant)):
            if value is not None:
                attributes[f"sandrun.{key}"] = value
    return attributes


def execute_job(job: Job, rt: Runtime, queue: str | None = None,
                node_id: str | None = None, *, output_key: str | None = None,
                feed: JobFeed | None = None) -> JobResult:
    """Run ``job`` on this worker: check what it asks for, hold GPUs, sandbox (its output
    and progress live to ``feed`` while it runs), store outputs (under ``output_key``,
    default the job's id: a consensus job's replicas each keep their own, under their
    task ids, and the vote names the one kept)."""
    longest = rt.settings.max_job_timeout
    if job.timeout > longest:
        return JobResult(id=job.id, status="rejected", outcome="rejected", error=ErrorInfo(
            type="InvalidJob", message=f"the job asks for a {job.timeout:g}s timeout; this "
            f"worker runs jobs of at most {longest:g}s (SANDRUN_MAX_JOB_TIMEOUT)"))
    env = {"CUDA_VISIBLE_DEVICES": ""}
    gpu_type = None
    with ExitStack() as stack:
        if job.needs_gpu and job.gpu is not None:
            devices = suitable(job, rt.gpus)
            if len(devices) < job.gpu.count:
                cards = [d.card.describe() for d in rt.gpus]
                return _refuse(job, "unsatisfiable", f"the job needs {describe_need(job.gpu)}; "
                               f"this worker has {', '.join(cards) or 'no GPU'}")
            ids = stack.enter_context(allocate(devices, job.gpu.count, rt.lock_dir, job.timeout))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
            gpu_type = devices[0].type
        with rt.manager.span("sandrun.sandbox", _span_attributes(job)):
            run = run_in_sandbox(job, rt.sandbox, env, warm_next=False,  # after the store
                                 live=feed)
    rt.outputs.put(output_key or job.id, run.outputs)
    pricing = rt.settings.pricing
    return JobResult(
        id=job.id, status=STATUS_BY_OUTCOME.get(run.outcome, "failed"),
        outcome=run.outcome, exit_code=run.exit_code, signal=run.signal,
        stdout=run.stdout, stderr=run.stderr, stdout_truncated=run.stdout_truncated,
        stderr_truncated=run.stderr_truncated, outputs=[o.info for o in run.outputs],
        outputs_truncated=run.outputs_truncated, execution_time=run.wall_seconds,
        cpu_seconds=run.cpu_seconds, memory_peak_bytes=run.memory_peak_bytes,
        cost=pricing.cost(job, run.cpu_seconds, run.wall_seconds) if pricing else None,
        execution=ExecutionInfo(node_id=node_id or rt.node_id, pool_id=str(os.getpid()),
                                queue=queue, gpu_type=gpu_type),
        isolation=run.isolation,
        error=ErrorInfo(type="SandboxError", message=run.error) if run.error else None)


def run_job(execution: Execution, context: ExecutionContext,
            task: Task[Any, Any] | None = None) -> JobResult:
    """The body of ``sandrun.run_job``: the Job parsed from the message, run on this
    worker (on the queue and node the context names), its output streamed live and its
    progress stored as ``task``'s state; the adapter stores the result."""
    if execution.job is None:
        raise TypeError(f"{RUN_JOB} runs a Job; execution {execution.task_id} carries none")
    job = execution.job
    replica = replica_index(context.task_id, job)
    output_key = None if replica is None else context.task_id
    rt = current()
    # a consensus job's replicas stream under their own task ids, as they keep outputs
    feed = job_feed(rt, output_key or job.id, task, execution.task_id)
    try:
        return execute_job(job, rt, context.queue, context.node_id, output_key=output_key,
                           feed=feed)
    finally:
        if feed is not None:
            feed.end()  # before the adapter stores the result: followers see it all first


class RunJobTask(SandrunTask):
    """The task class of ``sandrun.run_job``: its body is :func:`run_job`; a GPU job this
    worker's cards cannot run is sent on (:mod:`worker.node.gpuroute`)."""

    def sent_on(self, rt: Runtime, execution: Execution) -> bool:
        """Publish a GPU job this worker cannot run again: to a narrower class it does not
        consume at once (unless a signature binds the message to its queue), else to its
        queue after a countdown (unless it was re-routed ``MAX_REROUTES`` times: it then
        runs, and ends unsatisfiable)."""
        job = execution.job
        if job is None or not gpuroute.misdelivered(job, rt.gpus):
            return False
        if self._or_requeue(execution, lambda: rt.revocations.revoked(self.cancel_ids(execution))):
            return False  # not sent on: its attempt begins, finds it cancelled and ends
        headers = republished_headers(self.request.headers)
        done = gpuroute.reroutes(headers)
        if done >= gpuroute.MAX_REROUTES:
            return False
        headers[GPU_REROUTES_HEADER] = done + 1
        bound = any(name in headers for name in QUEUE_BINDING_HEADERS)  # signed with it
        target = None if bound else gpuroute.narrower_queue(
            job, rt.redis, rt.settings.default_queue, taskrequest.consumed_queues(self.app))
        options: dict[str, Any]
        if target is not None:
            wait, options = 0.0, {"queue": target}
        else:
            wait = gpuroute.countdown(done)
            options = redelivery_options(self.app.conf, self.request.delivery_info, wait)
            if not wait:
                del options["countdown"]
            target = str(delivered_queue(self.request.delivery_info))
        self.signature_from_request(headers=headers, **options, **self._reprs()).apply_async()
        gpuroute.logged(job, target, done, wait, rt.gpus)
        return True

    def body(self, execution: Execution, context: ExecutionContext) -> JobResult:
        return run_job(execution, context, self)


def job_message(job: dict[str, Any]) -> JobResult:
    """``sandrun.run_job`` as Celery sees it: one argument, the job's JSON form, which
    Celery checks calls and re-publications against.

    A worker never calls this (the adapter runs :meth:`RunJobTask.body`); called
    directly, as ``task.run(job)``, it runs the job in the sandbox without hooks."""
    return execute_job(Job.model_validate(job), current())


def register(app: Celery) -> None:
    """Register ``sandrun.run_job`` on ``app`` (the worker's app does it once, at import)."""
    app.task(name=RUN_JOB, base=RunJobTask)(job_message)
