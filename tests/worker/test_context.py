"""The job context on the wire: built from hostile headers, never raising, never echoing
a bad value; carried through the lifecycle into logs, dead letters and the result."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from worker import (
    BasePlugin,
    DeadLetter,
    ErrorContext,
    Execution,
    ExecutionContext,
    Job,
    JobContext,
    JobResult,
    PluginContext,
    PluginManager,
    ResultContext,
    current_job_context,
)
from worker.models.context import MAX_BAGGAGE_ITEMS
from worker.node.lifecycle import Finished, run_lifecycle
from worker.protocol import (
    BAGGAGE_HEADER,
    CORRELATION_HEADER,
    TENANT_HEADER,
    context_from_headers,
    context_headers,
)
from worker.stores.attempts import Attempts
from worker.stores.deadletter import FileDeadLetterStore

FULL = JobContext(correlation_id="req-42", tenant="acme", baggage={"team": "ml", "run": "7"})


def test_headers_round_trip_and_carry_only_what_is_set() -> None:
    headers = context_headers(FULL)
    assert headers == {CORRELATION_HEADER: "req-42", TENANT_HEADER: "acme",
                       BAGGAGE_HEADER: {"team": "ml", "run": "7"}}
    assert context_from_headers(headers) == (FULL, [])
    assert context_headers(JobContext(correlation_id="c")) == {CORRELATION_HEADER: "c"}
    assert context_from_headers({"other": "x"}) == (JobContext(), [])


@pytest.mark.parametrize(("headers", "dropped"), [
    ({CORRELATION_HEADER: "a\nforged_line=1"}, CORRELATION_HEADER),
    ({CORRELATION_HEADER: "x" * 129}, CORRELATION_HEADER),
    ({TENANT_HEADER: ["acme"]}, TENANT_HEADER),
    ({TENANT_HEADER: "\x1b[31mred"}, TENANT_HEADER),
    ({BAGGAGE_HEADER: "team=ml"}, BAGGAGE_HEADER),
    ({BAGGAGE_HEADER: {"k": "v\r\nx"}}, BAGGAGE_HEADER),
    ({BAGGAGE_HEADER: {"bad key": "v"}}, BAGGAGE_HEADER),
    ({BAGGAGE_HEADER: {"k": 1}}, BAGGAGE_HEADER),
    ({BAGGAGE_HEADER: {f"k{i}": "v" for i in range(MAX_BAGGAGE_ITEMS + 1)}}, BAGGAGE_HEADER),
    ({BAGGAGE_HEADER: {f"k{i}": "v" * 250 for i in range(10)}}, BAGGAGE_HEADER),
])
def test_a_hostile_header_is_dropped_by_name_and_the_others_kept(
        headers: dict[str, Any], dropped: str) -> None:
    good = {k: v for k, v in context_headers(FULL).items() if k != dropped}
    context, problems = context_from_headers({**good, **headers})
    assert context_headers(context) == good
    assert problems and all(p.startswith(f"{dropped}: ") for p in problems)
    for value in headers.values():  # the problem names the rule, never the value
        assert not any(str(value)[:20] in p for p in problems if len(str(value)) > 3)


def test_the_model_refuses_what_the_headers_drop() -> None:
    with pytest.raises(ValidationError):
        JobContext(tenant="two words")
    with pytest.raises(ValidationError, match="baggage holds"):
        JobContext(baggage={f"k{i}": "v" * 250 for i in range(10)})


class Watcher(BasePlugin):
    """Records what the worker-side hooks see of the job's context, and dead-letters the
    job in on_error as the retry plugin does when attempts run out."""

    name = "watcher"

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.letters = context.dead_letters
        self.seen: dict[str, Any] = {}

    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        self.seen["execute"] = (context.correlation_id, context.tenant, dict(context.baggage))
        self.seen["log"] = structlog.contextvars.get_contextvars()
        self.seen["current"] = current_job_context()

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        assert self.letters is not None and context.task_id is not None
        self.letters.add(DeadLetter(id=context.task_id, task="sandrun.run_job",
                                    reason=str(error), source="test"))

    def on_result(self, result: JobResult, context: ResultContext) -> None:
        self.seen["result"] = result.context


def run_with(context: JobContext, tmp_path: Any, status: str = "completed",
             hook_timeout: float = 0.0) -> tuple[Watcher, JobResult, FileDeadLetterStore]:
    letters = FileDeadLetterStore(tmp_path)
    manager = PluginManager(dead_letters=letters, hook_timeout=hook_timeout)
    watcher = manager.load(Watcher)
    assert isinstance(watcher, Watcher)
    job = Job(code="print(1)")
    attempt = Attempts(None).begin(job.id, 1, redelivered=False)
    outcome = run_lifecycle(
        manager, attempt, Execution(task="sandrun.run_job", task_id=job.id, job=job),
        ExecutionContext(node_id="n", pool_id="1", task_id=job.id, job_id=job.id,
                         correlation_id=context.correlation_id, tenant=context.tenant,
                         baggage=dict(context.baggage)),
        lambda *_: JobResult(id=job.id, status=status), max_attempts=3)  # type: ignore[arg-type]
    assert isinstance(outcome, Finished)
    return watcher, outcome.result, letters


@pytest.mark.parametrize("hook_timeout", [0.0, 5.0])  # inline, and on a hook thread
def test_the_context_reaches_hooks_logs_dead_letters_and_the_result(
        tmp_path: Any, hook_timeout: float) -> None:
    watcher, result, letters = run_with(FULL, tmp_path, status="failed",
                                        hook_timeout=hook_timeout)
    assert watcher.seen["execute"] == ("req-42", "acme", {"team": "ml", "run": "7"})
    log = watcher.seen["log"]
    assert (log["correlation_id"], log["tenant"], log["baggage"]) == (
        "req-42", "acme", {"team": "ml", "run": "7"})
    assert watcher.seen["current"] == FULL and current_job_context() is None
    assert result.context == FULL and watcher.seen["result"] == FULL
    assert JobResult.model_validate_json(result.model_dump_json()).context == FULL
    [letter] = letters.list()
    assert letter.context == FULL
    assert structlog.contextvars.get_contextvars() == {}


def test_a_job_without_context_stores_none_and_logs_no_empty_fields(tmp_path: Any) -> None:
    watcher, result, _ = run_with(JobContext(), tmp_path)
    assert result.context is None and watcher.seen["result"] is None
    assert not {"correlation_id", "tenant", "baggage"} & set(watcher.seen["log"])
