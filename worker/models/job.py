"""What a producer submits: a Job, its files, GPU needs, payment and retry policy, and
the Execution ``on_execute`` sees.

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
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.errors import InvalidJob
from worker.models.consensus import Consensus, Quorum, quorum
from worker.models.durations import parse_duration
from worker.models.limits import (
    DEFAULT_CPU_SECONDS,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_SECONDS,
    FORBIDDEN_ENV_KEYS,
    FORBIDDEN_ENV_PREFIXES,
    FROZEN,
    INTERPRETERS_BY_EXTENSION,
    MAX_CPU_SECONDS,
    MAX_JOB_BYTES,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_SECONDS,
    EnvKey,
    Identifier,
    Isolation,
    LabelKey,
    check_relative_path,
)
from worker.models.requirements import normalize, parse_requirements_file


class JobFile(BaseModel):
    """One file of a job: text (``utf-8``) or bytes (``base64``), optionally executable."""

    model_config = FROZEN
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

    model_config = FROZEN
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

    model_config = FROZEN
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

    model_config = FROZEN
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

    model_config = FROZEN
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
    requirements: list[str] | str | None = Field(default=None, description=(
        "packages the worker installs from its wheel cache into a read-only layer on the "
        "job's PYTHONPATH: a list of names with version specifiers, or the path of a "
        "requirements file among the files"))
    environment: Identifier | None = Field(default=None, description=(
        "a named environment the worker's operator prepared (sandrun environments); its "
        "interpreter runs the job"))
    gpu: GPURequirements | None = None
    payment: Payment | None = None
    consensus: Consensus = "none"
    priority: int = Field(default=5, ge=0, le=9, description="0 lowest, 9 most urgent")
    scheduled_time: datetime | None = None
    deadline: datetime | None = Field(default=None, description=(
        "a job not started by then is never run and ends expired; give it, or expires_in "
        "(seconds or a duration such as 30s, 5m), which becomes a deadline when the job "
        "is built"))
    queue: Identifier | None = None
    labels: dict[LabelKey, Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    isolation: Isolation = Field(default="process", description="least isolation accepted")
    network: bool = Field(default=False, description=(
        "the job needs the network; only workers whose operator allows it "
        "(SANDRUN_ALLOW_JOB_NETWORK) run it, others refuse it"))
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

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list):
            return list(normalize(value))
        if isinstance(value, str):
            return check_relative_path(value, "requirements file")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key in FORBIDDEN_ENV_KEYS or key.startswith(FORBIDDEN_ENV_PREFIXES):
                raise ValueError(f"variable {key!r} may not be set by a job (it could alter "
                                 "the interpreter or reach worker settings); remove it")
        return value

    @field_validator("scheduled_time", "deadline")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a timezone, e.g. 2030-01-01T12:00:00Z")
        return value

    @model_validator(mode="before")
    @classmethod
    def _expires_in(cls, data: Any) -> Any:
        """``expires_in`` is not kept: it becomes the absolute ``deadline`` now, so the
        job means the same thing wherever and whenever it is read again."""
        if not isinstance(data, dict) or "expires_in" not in data:
            return data
        data = dict(data)
        expires_in = data.pop("expires_in")
        if expires_in is None:
            return data
        if data.get("deadline") is not None:
            raise ValueError("give deadline or expires_in, not both")
        data["deadline"] = datetime.now(UTC) + timedelta(seconds=parse_duration(expires_in))
        return data

    @model_validator(mode="after")
    def _deadline_after_start(self) -> Self:
        if (self.deadline is not None and self.scheduled_time is not None
                and self.deadline <= self.scheduled_time):
            raise ValueError(f"deadline {self.deadline.isoformat()} is not after "
                             f"scheduled_time {self.scheduled_time.isoformat()}: the job "
                             "would expire before it may start")
        return self

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
        if isinstance(self.requirements, str):
            self._requirements_file(self.requirements)
        return self

    def _requirements_file(self, name: str) -> tuple[str, ...]:
        """The normalized requirements of the job's requirements file ``name``."""
        if name not in self.files:
            raise ValueError(f"requirements file {name!r} is not among the files; add it, or "
                             f"give a list of package names such as [{name!r}]")
        try:
            text = self.files[name].data().decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"requirements file {name!r} is not UTF-8 text") from None
        return normalize(parse_requirements_file(text))

    def requirement_set(self) -> tuple[str, ...]:
        """The job's requirements, normalized and sorted (empty when it has none)."""
        if isinstance(self.requirements, str):
            return self._requirements_file(self.requirements)
        return tuple(self.requirements or ())

    def replace(self, **changes: Any) -> Job:
        """Return a validated copy with ``changes`` applied (hooks use this)."""
        return Job.model_validate({**self.model_dump(), **changes})

    def expired(self, now: datetime | None = None) -> bool:
        """True once the job's deadline has passed (it must not start any more)."""
        return self.deadline is not None and (now or datetime.now(UTC)) >= self.deadline

    @property
    def quorum(self) -> Quorum:
        """How many replicas run (n) and how many must agree (k): see
        :mod:`worker.models.consensus`."""
        return quorum(self.consensus)

    @property
    def needs_gpu(self) -> bool:
        """True when the job must run on a GPU worker."""
        return self.gpu is not None and self.gpu.required

    @classmethod
    def from_manifest(cls, source: Any, *, files: dict[str, Any] | None = None) -> Job:
        """Build a job from a Sandrun manifest: a dict, a ``job.json`` path or its directory."""
        from worker.models.jobdir import manifest_fields, problems

        data = manifest_fields(source, files=files)
        try:
            return Job.model_validate(data)
        except ValidationError as exc:
            where = "manifest" if isinstance(source, Mapping) else str(source)
            raise InvalidJob(problems(exc), source=where) from None


class Execution(BaseModel):
    """What ``on_execute`` sees: the task about to run and, for ``sandrun.run_job``, its Job."""

    model_config = FROZEN
    task: str
    task_id: str
    job: Job | None = None
    task_args: list[Any] = Field(default_factory=list)
    task_kwargs: dict[str, Any] = Field(default_factory=dict)


