"""Wire names the producer and the worker must agree on, in one small module both
import.

The task name, the header a producer stamps with its publish time, the headers
that carry a job's :class:`~worker.models.context.JobContext` (:func:`context_headers`,
:func:`context_from_headers`), which queue a job is published to (for a GPU job its
capability class, and the classes a worker consumes: :func:`job_queue`,
:func:`gpu_queues`), the task ids of a consensus job's replicas, the state a running
job's progress is stored as, what a job message shows of itself (:func:`job_reprs`),
and :class:`Publication`, the message as it is sent. It imports nothing heavier than
the models, so a producer gets these without loading the node or the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from worker.models import Job
from worker.models.context import EMPTY, MAX_BAGGAGE_ITEMS, JobContext
from worker.models.gpus import VRAM_BUCKETS, GPUCard, needed_vram_gb, vram_bucket

#: The Celery task that runs one Job in the sandbox.
RUN_JOB = "sandrun.run_job"
#: Message header: how often a worker whose cards could not run a GPU job re-routed it.
GPU_REROUTES_HEADER = "sandrun_gpu_reroutes"
#: Message header: how often a delivery found its job's running lease held by another
#: delivery and was published again to wait (:mod:`worker.node.leasing`).
LEASE_WAITS_HEADER = "sandrun_lease_waits"
#: Headers of a signature that covers the message's queue (the ``auth`` plugin's): a
#: worker re-routing a GPU job never moves such a message to another queue, where it
#: would no longer verify; it goes back to its own queue.
QUEUE_BINDING_HEADERS = ("sandrun_auth",)
#: Message header: the producer's publish time (Unix seconds, a decimal string).
SUBMITTED_HEADER = "sandrun_submitted_at"
#: The task state a running job's latest progress report is stored as (its meta: the
#: report, :class:`~worker.models.Progress`); Flower shows it from ``task-progress`` events.
PROGRESS_STATE = "PROGRESS"
#: Message headers of a job's context: the correlation id and tenant (strings) and the
#: baggage (an object of strings). The ``auth`` plugin signs exactly these.
CORRELATION_HEADER = "sandrun_correlation_id"
TENANT_HEADER = "sandrun_tenant"
BAGGAGE_HEADER = "sandrun_baggage"
CONTEXT_HEADERS = (CORRELATION_HEADER, TENANT_HEADER, BAGGAGE_HEADER)
_FIELDS = {CORRELATION_HEADER: "correlation_id", TENANT_HEADER: "tenant",
           BAGGAGE_HEADER: "baggage"}
_HEADERS = {field: name for name, field in _FIELDS.items()}


def context_headers(context: JobContext) -> dict[str, Any]:
    """The headers that carry ``context`` (only those of fields that are set)."""
    headers: dict[str, Any] = {}
    if context.correlation_id is not None:
        headers[CORRELATION_HEADER] = context.correlation_id
    if context.tenant is not None:
        headers[TENANT_HEADER] = context.tenant
    if context.baggage:
        headers[BAGGAGE_HEADER] = dict(context.baggage)
    return headers


def context_from_headers(headers: Mapping[str, Any]) -> tuple[JobContext, list[str]]:
    """The JobContext a message's headers carry, and what was wrong with them.

    Headers are the sender's word: a header that is not valid (wrong type, too long,
    characters that could forge a log line) is left out, and named in the problems
    by header and rule, never by its value. Never raises."""
    given = {field: headers[name] for name, field in _FIELDS.items()
             if headers.get(name) is not None}
    if not given:
        return EMPTY, []
    baggage = given.get("baggage")
    if isinstance(baggage, dict) and len(baggage) > MAX_BAGGAGE_ITEMS:  # before validating it
        del given["baggage"]
        oversized = [f"{BAGGAGE_HEADER}: more than {MAX_BAGGAGE_ITEMS} items"]
    else:
        oversized = []
    try:
        return JobContext.model_validate(given), oversized
    except ValidationError as exc:
        errors = exc.errors()
    # a model-level rule (no location) is the baggage's total size
    fields = [str(error["loc"][0]) if error["loc"] else "baggage" for error in errors]
    problems = [f"{_HEADERS[field]}: {error['msg']}"
                for field, error in zip(fields, errors, strict=True)]
    kept = {field: value for field, value in given.items() if field not in fields}
    return JobContext.model_validate(kept), oversized + problems


#: Label the client stamps on a consensus job at each submit: one vote per submission, so
#: a job submitted again under its id (``sandrun dead replay``) is voted on afresh.
ROUND_LABEL = "sandrun.consensus-round"
#: How a replica's task id ends: ``<job id>.<round>.replica-<i>``.
REPLICA_SUFFIX = ".replica-"


def consensus_round(job: Job) -> str:
    """The submission a consensus job's replicas belong to: ``<job id>.<round label>``
    (the label is in the signed body), the prefix of their task ids and vote records."""
    label = job.labels.get(ROUND_LABEL)
    return f"{job.id}.{label}" if label else job.id


def replica_task_id(job: Job, replica: int) -> str:
    """The task id of replica ``replica`` (0-based) of a consensus job: each replica is its
    own message, signed and stored under its own id; the job's id holds the final result."""
    return f"{consensus_round(job)}{REPLICA_SUFFIX}{replica}"


def replica_index(task_id: str, job: Job) -> int | None:
    """Which replica of ``job`` the task ``task_id`` is, or None when it is none of the
    job's ``n`` replicas (a plain job, or a task id that does not match)."""
    head, sep, tail = task_id.rpartition(REPLICA_SUFFIX)
    if job.quorum.n == 1 or not sep or head != consensus_round(job) or not tail.isdigit():
        return None
    index = int(tail)
    return index if index < job.quorum.n and tail == str(index) else None


def job_queue(job: Job, default_queue: str) -> str:
    """The queue a job is published to: its own or the default, and for a job that
    requires a GPU its capability class, ``<queue>.gpu[.<type>][.vram<bucket>]`` (the
    VRAM it needs rounded down to a bucket of :data:`~worker.models.gpus.VRAM_BUCKETS`;
    no bucket below the first). Every worker whose cards meet the class consumes it
    (:func:`gpu_queues`); compute capability and CUDA version are matched by the
    client at submit and by the worker at delivery, not in the queue's name."""
    base = job.queue or default_queue
    if not job.needs_gpu:
        return base
    assert job.gpu is not None
    queue = f"{base}.gpu.{job.gpu.type.lower()}" if job.gpu.type else f"{base}.gpu"
    bucket = vram_bucket(needed_vram_gb(job.gpu))
    return f"{queue}.vram{bucket}" if bucket else queue


def gpu_queues(base_queues: Sequence[str], cards: Sequence[GPUCard]) -> list[str]:
    """The queues a worker with ``cards`` consumes: the plain ``base_queues`` and, for
    each, every GPU class its cards serve: ``.gpu``, ``.gpu.<type>`` per type, and
    ``.gpu.vram<b>`` and ``.gpu.<type>.vram<b>`` for each bucket ``b`` up to the card's
    VRAM. At most 2 + 2 x 5 queues per card type and base queue."""
    queues = list(base_queues)
    if not cards:
        return queues
    largest: dict[str, int] = {}
    for card in cards:
        bucket = vram_bucket(card.vram_gb) or 0
        largest[card.type] = max(largest.get(card.type, 0), bucket)
    for base in base_queues:
        classes = {f"{base}.gpu"}
        for kind, top in largest.items():
            buckets = [b for b in VRAM_BUCKETS if b <= top]
            classes.add(f"{base}.gpu.{kind}")
            classes.update(f"{base}.gpu.vram{b}" for b in buckets)
            classes.update(f"{base}.gpu.{kind}.vram{b}" for b in buckets)
        queues += sorted(classes)
    return queues


def job_summary(payload: Any) -> str:
    """What logs and monitors show of a job message's argument instead of the job:
    ``Job(id='...', interpreter='python3', code=<123 bytes>, files=<2, 4096 bytes>,
    env=<3 vars>)``. Its id and interpreter, and only the sizes of what it runs (code,
    files, env), never their contents: a job's code and env values are the submitter's,
    and may hold secrets."""
    if not isinstance(payload, dict):
        return f"<{type(payload).__name__}>"
    parts = [f"id={_short(payload.get('id'))}"]
    if payload.get("interpreter"):
        parts.append(f"interpreter={_short(payload['interpreter'])}")
    code = payload.get("code")
    if isinstance(code, str):
        parts.append(f"code=<{len(code.encode())} bytes>")
    files = payload.get("files")
    if isinstance(files, dict) and files:
        size = sum(len(str(f.get("content", "")).encode()) for f in files.values()
                   if isinstance(f, dict))
        parts.append(f"files=<{len(files)}, {size} bytes>")
    env = payload.get("env")
    if isinstance(env, dict) and env:
        parts.append(f"env=<{len(env)} vars>")
    return f"Job({', '.join(parts)})"


def _short(value: Any) -> str:
    """An identifier for a summary: quoted, at most 64 characters (an unchecked message
    may carry anything there)."""
    return repr(str(value)[:64])


def job_reprs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
    """``argsrepr`` and ``kwargsrepr`` for a ``sandrun.run_job`` message (the options of
    ``send_task``, ``apply_async`` and ``Task.retry``).

    Celery puts a repr of the arguments in every message it publishes; the worker's
    "received" record, the ``task-sent`` and ``task-received`` events and so Flower's
    task list show it. For a job that repr is the whole job, code and env values
    included, so Sandrun sends :func:`job_summary` in its place."""
    shown = {key: job_summary(value) if key == "job" else "..." for key, value in kwargs.items()}
    kwargsrepr = "{" + ", ".join(f"{key!r}: {value}" for key, value in shown.items()) + "}"
    return {"argsrepr": ", ".join(job_summary(arg) for arg in args) or "()",
            "kwargsrepr": kwargsrepr}


@dataclass(slots=True)
class Publication:
    """The Celery message a client is about to publish, after every ``on_submit`` hook.

    The client hands it to ``on_publish`` (hooks that must see the message exactly as
    sent: a signer needs the body, queue and ETA; a scheduler may hold it) and sends
    what the chain returns, unless a hook raised
    :class:`~worker.errors.PublicationHeld` because it took the message over."""

    task: str
    task_id: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: datetime | None = None
    priority: int | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    #: Celery's ``expires``: a worker receiving the message later stores it as revoked
    #: with the reason ``expired`` instead of running it (a job's ``deadline``).
    expires: datetime | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``Celery.send_task`` for this message (a job's
        message shows a summary of the job, not the job: :func:`job_reprs`)."""
        options: dict[str, Any] = {"task_id": self.task_id, "queue": self.queue,
                                   "headers": dict(self.headers), "retry": False}
        if self.task == RUN_JOB:
            options.update(job_reprs(self.args, self.kwargs))
        if self.eta is not None:
            options["eta"] = self.eta
        if self.priority is not None:
            options["priority"] = self.priority
        if self.expires is not None:
            options["expires"] = self.expires
        return options
