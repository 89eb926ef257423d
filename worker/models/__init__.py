"""Data shapes that travel between producers, brokers, workers and plugins.

``job`` holds what a producer submits (Job and its parts, Execution), ``result``
what comes back (JobResult, WorkerInfo), ``context`` what travels with a job
(JobContext: correlation id, tenant, baggage), ``limits`` the bounds and names both
share, ``jobdir`` the ``job.json`` directory format behind ``Job.from_manifest``,
``consensus`` the k-of-n levels and the vote's summary, ``progress`` what a running
job reports of itself, ``builder`` the fluent JobBuilder (producers build with it,
``on_build`` hooks set its defaults) and ``pricing`` the pricing table. Import the
shapes from ``worker.models`` itself; modules inside this package import each other
directly, never this package, so it has no import cycle.
"""

from __future__ import annotations

from worker.models.consensus import (
    MAX_REPLICAS,
    Consensus,
    ConsensusSummary,
    Quorum,
    ReplicaVote,
    quorum,
)
from worker.models.context import JobContext, current_job_context, new_correlation_id
from worker.models.job import (
    Execution,
    GPURequirements,
    Job,
    JobFile,
    Payment,
    RetryPolicy,
)
from worker.models.limits import (
    DEFAULT_CPU_SECONDS,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_SECONDS,
    FINAL_STATUSES,
    FORBIDDEN_ENV_KEYS,
    FORBIDDEN_ENV_PREFIXES,
    INTERPRETERS_BY_EXTENSION,
    MAX_CPU_SECONDS,
    MAX_JOB_BYTES,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_SECONDS,
    Isolation,
    JobStatus,
    Outcome,
    check_relative_path,
)
from worker.models.progress import MAX_PROGRESS_MESSAGE, MAX_PROGRESS_STEPS, Progress
from worker.models.result import (
    TRUNCATION_MARKER,
    Cost,
    ErrorInfo,
    ExecutionInfo,
    JobResult,
    OutputFile,
    Transform,
    WorkerInfo,
    cap_text,
)

__all__ = [
    "DEFAULT_CPU_SECONDS",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_SECONDS",
    "FINAL_STATUSES",
    "FORBIDDEN_ENV_KEYS",
    "FORBIDDEN_ENV_PREFIXES",
    "INTERPRETERS_BY_EXTENSION",
    "MAX_CPU_SECONDS",
    "MAX_JOB_BYTES",
    "MAX_MEMORY_MB",
    "MAX_PROGRESS_MESSAGE",
    "MAX_PROGRESS_STEPS",
    "MAX_REPLICAS",
    "MAX_TIMEOUT_SECONDS",
    "TRUNCATION_MARKER",
    "Consensus",
    "ConsensusSummary",
    "Cost",
    "ErrorInfo",
    "Execution",
    "ExecutionInfo",
    "GPURequirements",
    "Isolation",
    "Job",
    "JobContext",
    "JobFile",
    "JobResult",
    "JobStatus",
    "Outcome",
    "OutputFile",
    "Payment",
    "Progress",
    "Quorum",
    "ReplicaVote",
    "RetryPolicy",
    "Transform",
    "WorkerInfo",
    "cap_text",
    "check_relative_path",
    "current_job_context",
    "new_correlation_id",
    "quorum",
]
