"""Data shapes that travel between producers, brokers, workers and plugins.

``job`` holds what a producer submits (Job and its parts, Execution), ``result``
what comes back (JobResult, WorkerInfo), ``limits`` the bounds and names both
share, ``jobdir`` the ``job.json`` directory format behind ``Job.from_manifest``,
``progress`` what a running job reports of itself, ``builder`` the fluent
JobBuilder (producers build with it, ``on_build`` hooks set its defaults) and
``pricing`` the pricing table. Import the shapes from ``worker.models`` itself;
modules inside this package import each other directly, never this package, so it
has no import cycle.
"""

from __future__ import annotations

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
    Consensus,
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
    WorkerInfo,
    cap_text,
)

__all__ = [
    "DEFAULT_CPU_SECONDS", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_SECONDS", "FINAL_STATUSES",
    "FORBIDDEN_ENV_KEYS", "FORBIDDEN_ENV_PREFIXES", "INTERPRETERS_BY_EXTENSION",
    "MAX_CPU_SECONDS", "MAX_JOB_BYTES", "MAX_MEMORY_MB", "MAX_PROGRESS_MESSAGE",
    "MAX_PROGRESS_STEPS", "MAX_TIMEOUT_SECONDS", "TRUNCATION_MARKER", "Consensus", "Cost",
    "ErrorInfo", "Execution", "ExecutionInfo",
    "GPURequirements", "Isolation", "Job", "JobFile", "JobResult", "JobStatus", "Outcome",
    "OutputFile", "Payment", "Progress", "RetryPolicy", "WorkerInfo", "cap_text",
    "check_relative_path",
]
