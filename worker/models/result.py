"""What comes back: a JobResult with its outputs, cost, errors and where it ran, and
the WorkerInfo a running worker advertises.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from worker.models.consensus import ConsensusSummary
from worker.models.context import JobContext
from worker.models.gpus import GPUCard
from worker.models.limits import FROZEN, Identifier, JobStatus, Outcome


class WorkerInfo(BaseModel):
    """A running worker as ``sandrun workers`` shows it; ``on_worker_start`` hooks may add
    ``extra`` entries (the metrics plugin adds ``metrics_url``)."""

    model_config = FROZEN
    hostname: str
    pid: int
    queues: list[str] = Field(default_factory=list)
    concurrency: int | None = None
    pool: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    #: The cards it hands to jobs (nvidia-smi's or SANDRUN_GPUS's); a client matches a
    #: GPU job's requirements against them at submit.
    gpus: list[GPUCard] = Field(default_factory=list)

    def replace(self, **changes: Any) -> WorkerInfo:
        """A validated copy with ``changes`` applied."""
        return WorkerInfo.model_validate({**self.model_dump(), **changes})


class OutputFile(BaseModel):
    """A file the job produced and the worker collected."""

    model_config = FROZEN
    path: str
    size: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Cost(BaseModel):
    """What a run cost, as a decimal string in a currency."""

    model_config = FROZEN
    amount: str
    currency: str


class ExecutionInfo(BaseModel):
    """Where a job ran."""

    model_config = FROZEN
    node_id: str | None = None
    pool_id: str | None = None
    queue: str | None = None
    gpu_type: str | None = None


class ErrorInfo(BaseModel):
    """Why a job did not complete: exception type name and message."""

    model_config = FROZEN
    type: str
    message: str


class Transform(BaseModel):
    """Provenance: one hook call that changed a job or its result, as a stored result
    records it. ``fields`` names what changed (``job.timeout``, ``labels``; ``*``: the
    whole value was replaced). Entries from ``on_submit`` arrive in a message header,
    so, like every header, they are the sender's word."""

    model_config = FROZEN
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    hook: Annotated[str, StringConstraints(pattern=r"^on_[a-z0-9_]{1,60}$")]
    fields: list[Annotated[str, StringConstraints(max_length=128)]] = Field(max_length=64)


class JobResult(BaseModel):
    """The outcome of one job, as stored in the result backend and returned by ``wait``."""

    model_config = FROZEN
    id: Identifier
    status: JobStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    outputs: list[OutputFile] = Field(default_factory=list)
    execution_time: float | None = Field(default=None, ge=0)
    cpu_seconds: float | None = Field(default=None, ge=0)
    memory_peak_bytes: int | None = Field(default=None, ge=0)
    cost: Cost | None = None
    execution: ExecutionInfo | None = None
    attempts: int = Field(default=1, ge=0)
    error: ErrorInfo | None = None
    outcome: Outcome | None = None
    signal: int | None = None
    isolation: str | None = None
    outputs_truncated: bool = False
    value: Any = Field(default=None, description="return value of a user task")
    provenance: list[Transform] = Field(default_factory=list, max_length=64, description=(
        "which plugins' hooks changed the job and its result, in order"))
    context: JobContext | None = Field(default=None, description=(
        "the correlation id, tenant and baggage the job travelled with"))
    consensus: ConsensusSummary | None = Field(default=None, description=(
        "a consensus job's vote: on its final result, every replica's node and digest"))

    def replace(self, **changes: Any) -> JobResult:
        """Return a validated copy with ``changes`` applied (``on_result`` hooks use this)."""
        return JobResult.model_validate({**self.model_dump(), **changes})


TRUNCATION_MARKER = "\n[sandrun: output truncated, {dropped} more bytes not kept]\n"


def cap_text(data: bytes, limit: int, dropped: int = 0) -> tuple[str, bool]:
    """Decode captured output, keeping at most ``limit`` bytes and marking a cut.

    ``dropped`` counts bytes already discarded while capturing, so the marker
    says how much was lost in total.
    """
    if len(data) <= limit and not dropped:
        return data.decode("utf-8", errors="replace"), False
    kept = data[:limit].decode("utf-8", errors="replace")
    lost = len(data) - min(limit, len(data)) + dropped
    return kept + TRUNCATION_MARKER.format(dropped=lost), True
