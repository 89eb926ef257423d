"""Data shapes that travel between producers, brokers, workers and plugins.

Every model is a frozen pydantic v2 model: hooks never mutate what they are
given, they return a new object (``job.replace(timeout=60)``), which is how a
hook's result replaces the data for the next hook. Models serialise to plain
JSON (``model_dump(mode="json")``) because the broker accepts JSON only.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

MAX_TIMEOUT_SECONDS = 3600
MAX_MEMORY_MB = 2048
MAX_CPU_SECONDS = 3600
DEFAULT_TIMEOUT_SECONDS = 300
DEFAULT_MEMORY_MB = 512
DEFAULT_CPU_SECONDS = 10
MAX_JOB_BYTES = 16 * 1024 * 1024

#: Interpreter inferred from an entrypoint's extension when none is given.
INTERPRETERS_BY_EXTENSION = {
    ".py": "python3",
    ".js": "node",
    ".mjs": "node",
    ".cjs": "node",
    ".sh": "bash",
    ".bash": "bash",
    ".rb": "ruby",
    ".r": "Rscript",
    ".pl": "perl",
}

#: Environment keys a job may never set: they change how the loader or the
#: interpreter itself behaves, so they would let a job escape its limits.
FORBIDDEN_ENV_KEYS = frozenset(
    {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONSTARTUP", "PYTHONINSPECT",
     "NODE_OPTIONS", "BASH_ENV", "ENV", "PERL5OPT", "RUBYOPT", "IFS"}
)
FORBIDDEN_ENV_PREFIXES = ("SANDRUN_", "CELERY_", "DYLD_")

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EnvKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_./-]{0,62}$")]
Consensus = Literal["none", "low", "medium", "high", "2-of-3", "3-of-5"]
JobStatus = Literal["completed", "failed", "cancelled", "rejected", "timeout"]
#: Finer than the status: why a job ended the way it did.
Outcome = Literal["completed", "failed", "timeout", "memory_limit", "cpu_limit", "process_limit",
                  "signal", "rejected", "cancelled", "worker_lost", "isolation_unavailable",
                  "unsatisfiable"]
Isolation = Literal["process", "network"]
FINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "failed", "cancelled", "rejected", "timeout"})

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def check_relative_path(path: str, what: str = "path") -> str:
    """Return ``path`` normalised, or raise ValueError if it could leave the job directory."""
    if not path or "\x00" in path:
        raise ValueError(f"{what} must be a non-empty path without NUL bytes")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"{what} {path!r} is absolute; use a path relative to the job directory")
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"{what} {path!r} contains '..'; paths must stay inside the job directory")
    return posixpath.normpath("/".join(parts))


class JobFile(BaseModel):
    """One file of a job: text (``utf-8``) or bytes (``base64``), optionally executable."""

    model_config = _FROZEN
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"
    executable: bool = False

    @model_validator(mode="after")
    def _decodable(self) -> Self:
        if self.encoding == "base64":
            try:
                base64.b64decode(self.content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("content is not valid base64") from exc
        return self

    def data(self) -> bytes:
        """The file's bytes as they will be written into the sandbox."""
        if self.encoding == "base64":
            return base64.b64decode(self.content)
        return self.content.encode("utf-8")


class GPURequirements(BaseModel):
    """What a job needs from a GPU; ``required=False`` means "use one if present"."""

    model_config = _FROZEN
    required: bool = True
    type: Identifier | None = None
    count: int = Field(default=1, ge=1, le=16)
    memory_mb: int | None = Field(default=None, ge=1)
    min_vram_gb: float | None = Field(default=None, gt=0)
    cuda_version: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+){0,2}$")] | None = None
    compute_capability: Annotated[str, StringConstraints(pattern=r"^\d+\.\d+$")] | None = None
    device_id: int | None = Field(default=None, ge=0)


class Payment(BaseModel):
    """What the producer offers for a job: a decimal amount in a currency or token."""

    model_config = _FROZEN
    amount: str
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]

    @field_validator("amount")
    @classmethod
    def _decimal(cls, value: str) -> str:
        try:
            amount = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"amount {value!r} is not a decimal number such as '0.1'") from exc
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"amount {value!r} must be a finite number >= 0")
        return value

    def decimal(self) -> Decimal:
        """The amount as a :class:`~decimal.Decimal`, never a float."""
        return Decimal(self.amount)


class RetryPolicy(BaseModel):
    """When and how often a failed job is tried again (the retry plugin's options).

    ``retry_if`` entries: an int is an exit code, an outcome name (``timeout``,
    ``memory_limit``, ...) matches the job's outcome, ``"module:callable"`` is a
    predicate ``(error, context) -> bool``, anything else an exception type name.
    Empty means every retryable failure.
    """

    model_config = _FROZEN
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    base_delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=30.0, ge=0)
    retry_if: list[str | int] = Field(default_factory=list)
    jitter: bool | None = Field(default=None, description="full jitter; default on for "
                                                         "exponential backoff")

    def delay(self, n: int) -> float:
        """Delay before retry ``n`` (0 for the first retry), before jitter."""
        if self.backoff == "fixed":
            return self.base_delay
        if self.backoff == "linear":
            return self.base_delay * (n + 1)
        return float(min(self.base_delay * 2**n, self.max_delay))

    @property
    def jittered(self) -> bool:
        """Whether delays get full jitter."""
        return self.backoff == "exponential" if self.jitter is None else self.jitter


class Job(BaseModel):
    """A unit of work: inline ``code`` or an ``entrypoint`` among ``files``, plus limits.

    Build one directly, with :meth:`from_manifest` (a ``job.json`` directory), or
    with the client's fluent builder. Invalid input raises pydantic's
    ``ValidationError``, which names each field and the rule it broke.
    """

    model_config = _FROZEN
    id: Identifier = Field(default_factory=lambda: uuid.uuid4().hex)
    code: str | None = None
    entrypoint: str | None = None
    files: dict[str, JobFile] = Field(default_factory=dict)
    interpreter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._+-]{1,64}$")] | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[EnvKey, str] = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS)
    memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=1, le=MAX_MEMORY_MB)
    cpu_seconds: int = Field(default=DEFAULT_CPU_SECONDS, ge=1, le=MAX_CPU_SECONDS)
    outputs: list[str] = Field(default_factory=lambda: ["*"])
    requirements: str | None = None
    environment: Identifier | None = None
    gpu: GPURequirements | None = None
    payment: Payment | None = None
    consensus: Consensus = "none"
    priority: int = Field(default=5, ge=0, le=9, description="0 lowest, 9 most urgent")
    scheduled_time: datetime | None = None
    queue: Identifier | None = None
    labels: dict[LabelKey, Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    isolation: Isolation = Field(default="process", description="least isolation accepted")
    retry: RetryPolicy | None = Field(default=None, description="overrides the retry plugin")

    @field_validator("files", mode="before")
    @classmethod
    def _files(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for path, content in value.items():
            out[check_relative_path(str(path), "file path")] = (
                {"content": content} if isinstance(content, str) else content
            )
        return out

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: list[str]) -> list[str]:
        return [check_relative_path(p, "output pattern") + ("/" if p.endswith("/") else "")
                for p in value]

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key in FORBIDDEN_ENV_KEYS or key.startswith(FORBIDDEN_ENV_PREFIXES):
                raise ValueError(f"variable {key!r} may not be set by a job (it could alter "
                                 "the interpreter or reach worker settings); remove it")
        return value

    @field_validator("scheduled_time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("scheduled_time needs a timezone, e.g. 2030-01-01T12:00:00Z")
        return value

    @model_validator(mode="before")
    @classmethod
    def _infer_interpreter(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("interpreter"):
            entry = data.get("entrypoint")
            if entry:
                ext = posixpath.splitext(str(entry))[1].lower()
                if ext not in INTERPRETERS_BY_EXTENSION:
                    raise ValueError(f"cannot infer the interpreter of entrypoint {entry!r}; "
                                     "set 'interpreter' (python3, node, bash, ruby, Rscript, ...)")
                data = {**data, "interpreter": INTERPRETERS_BY_EXTENSION[ext]}
            elif data.get("code") is not None:
                data = {**data, "interpreter": "python3"}
        return data

    @model_validator(mode="after")
    def _size(self) -> Self:
        size = len(self.code or "") + sum(len(f.content) for f in self.files.values())
        if size > MAX_JOB_BYTES:
            raise ValueError(f"the job's code and files take {size} bytes, over the "
                             f"{MAX_JOB_BYTES // 2**20} MiB a message may carry; ship large "
                             "inputs separately")
        return self

    @model_validator(mode="after")
    def _what_to_run(self) -> Self:
        if (self.code is None) == (self.entrypoint is None):
            raise ValueError("give exactly one of 'code' (inline source) or 'entrypoint'")
        if self.entrypoint is not None:
            entry = check_relative_path(self.entrypoint, "entrypoint")
            if entry not in self.files:
                raise ValueError(f"entrypoint {entry!r} is not among the job's files; add it to "
                                 "'files' or load the manifest from its directory")
        if self.requirements is not None and self.requirements not in self.files:
            raise ValueError(f"requirements file {self.requirements!r} is not among the files")
        return self

    def replace(self, **changes: Any) -> Job:
        """Return a validated copy with ``changes`` applied (hooks use this)."""
        return Job.model_validate({**self.model_dump(), **changes})

    @property
    def needs_gpu(self) -> bool:
        """True when the job must run on a GPU worker."""
        return self.gpu is not None and self.gpu.required

    @classmethod
    def from_manifest(cls, source: Any, *, files: dict[str, Any] | None = None) -> Job:
        """Build a job from a Sandrun manifest: a dict, a ``job.json`` path or its directory."""
        from worker.manifest import load_manifest

        return load_manifest(source, files=files)


class Execution(BaseModel):
    """What ``on_execute`` sees: the task about to run and, for ``sandrun.run_job``, its Job."""

    model_config = _FROZEN
    task: str
    task_id: str
    job: Job | None = None
    task_args: list[Any] = Field(default_factory=list)
    task_kwargs: dict[str, Any] = Field(default_factory=dict)


class WorkerInfo(BaseModel):
    """A running worker as ``sandrun workers`` shows it; ``on_worker_start`` hooks may add
    ``extra`` entries (the metrics plugin adds ``metrics_url``)."""

    model_config = _FROZEN
    hostname: str
    pid: int
    queues: list[str] = Field(default_factory=list)
    concurrency: int | None = None
    pool: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)

    def replace(self, **changes: Any) -> WorkerInfo:
        """A validated copy with ``changes`` applied."""
        return WorkerInfo.model_validate({**self.model_dump(), **changes})


class OutputFile(BaseModel):
    """A file the job produced and the worker collected."""

    model_config = _FROZEN
    path: str
    size: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Cost(BaseModel):
    """What a run cost, as a decimal string in a currency."""

    model_config = _FROZEN
    amount: str
    currency: str


class ExecutionInfo(BaseModel):
    """Where a job ran."""

    model_config = _FROZEN
    node_id: str | None = None
    pool_id: str | None = None
    queue: str | None = None
    gpu_type: str | None = None


class ErrorInfo(BaseModel):
    """Why a job did not complete: exception type name and message."""

    model_config = _FROZEN
    type: str
    message: str


class JobResult(BaseModel):
    """The outcome of one job, as stored in the result backend and returned by ``wait``."""

    model_config = _FROZEN
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
