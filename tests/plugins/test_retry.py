"""The retry plugin called directly: policy, delays, jitter, matching, dead letters."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.retry import RetryConfig, RetryPlugin, retry_plugin
from worker import ErrorContext, Job, JobResult, PluginManager
from worker.collector import InMemoryMetrics
from worker.errors import JobFailed, JobRejected, RetryRequested
from worker.models import Execution, RetryPolicy
from worker.stores.deadletter import DeadLetter, DeadLetterStore


class ListStore(DeadLetterStore):
    def __init__(self) -> None:
        super().__init__()
        self.letters: list[DeadLetter] = []

    def _put(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def get(self, letter_id: str) -> DeadLetter | None:
        return next((x for x in self.letters if x.id == letter_id), None)

    def list(self, limit: int = 100) -> list[DeadLetter]:
        return self.letters[:limit]

    def remove(self, letter_id: str, *, only: DeadLetter | None = None) -> bool:
        return False


def load(plugin: RetryPlugin, config: dict[str, Any] | None = None) -> tuple[PluginManager,
                                                                              ListStore]:
    store = ListStore()
    manager = PluginManager(dead_letters=store, metrics=InMemoryMetrics())
    manager.load(plugin, config)
    return manager, store


def failure(job: Job, outcome: str = "failed", exit_code: int | None = 1) -> JobFailed:
    result = JobResult(id=job.id, status="failed", outcome=outcome, exit_code=exit_code)
    return JobFailed(f"job {job.id} ended failed", result)


def ctx(job: Job, attempt: int) -> ErrorContext:
    return ErrorContext(operation="execute", attempt=attempt, job=job, task_id=job.id,
                        execution=Execution(task="sandrun.run_job", task_id=job.id, job=job))


def countdown(manager: PluginManager, error: BaseException, context: ErrorContext) -> float:
    with pytest.raises(RetryRequested) as info:
        manager.execute_hook("on_error", error, context)
    return info.value.countdown


@pytest.mark.parametrize(("backoff", "expected"), [
    ("fixed", [2, 2, 2, 2, 2]),
    ("linear", [2, 4, 6, 8, 10]),
    ("exponential", [2, 4, 8, 16, 20]),
])
def test_delays_follow_the_formulas_exactly(backoff: str, expected: list[float]) -> None:
    plugin = retry_plugin(max_attempts=10, backoff=backoff, base_delay=2, max_delay=20,
                          jitter=False)
    manager, _ = load(plugin)
    job = Job(code="1")
    delays = [countdown(manager, failure(job), ctx(job, n + 1)) for n in range(5)]
    assert delays == expected


def test_full_jitter_uses_the_injected_random_source() -> None:
    draws = iter([0.5, 0.25])
    manager, _ = load(retry_plugin(base_delay=4, random=lambda: next(draws)))
    job = Job(code="1")
    assert countdown(manager, failure(job), ctx(job, 1)) == 2.0
    assert countdown(manager, failure(job), ctx(job, 2)) == 2.0
    assert RetryPolicy().jittered and not RetryPolicy(backoff="fixed").jittered


def test_exhausted_attempts_go_to_the_dead_letter_store_with_history() -> None:
    seen: list[tuple[int, str]] = []
    plugin = retry_plugin(max_attempts=3, jitter=False,
                          on_retry=lambda n, e: seen.append((n, type(e).__name__)))
    manager, store = load(plugin)
    job = Job(code="1")
    countdown(manager, failure(job), ctx(job, 1))
    countdown(manager, failure(job), ctx(job, 2))
    assert manager.execute_hook("on_error", failure(job, exit_code=9), ctx(job, 3))
    assert seen == [(2, "JobFailed"), (3, "JobFailed")]
    (letter,) = store.letters
    assert letter.id == job.id and letter.source == "retry" and letter.job is not None
    assert [a["attempt"] for a in letter.attempts] == [1, 2, 3]
    assert letter.attempts[-1]["exit_code"] == 9 and "gave up after 3" in letter.reason


@pytest.mark.parametrize(("rules", "error_kind", "retried"), [
    (["timeout"], "timeout", True),
    (["timeout"], "failed", False),
    ([3], "exit3", True),
    ([3], "exit1", False),
    (["ConnectionError"], "conn", True),
    (["OSError"], "conn", True),
    (["ValueError"], "conn", False),
    (["tests.plugins.test_retry:only_memory"], "memory", True),
    (["tests.plugins.test_retry:only_memory"], "timeout", False),
    ([], "conn", True),
])
def test_retry_if(rules: list[str | int], error_kind: str, retried: bool) -> None:
    manager, _ = load(retry_plugin(retry_if=rules, jitter=False, max_attempts=5))
    job = Job(code="1")
    error: BaseException = {
        "timeout": failure(job, "timeout", None), "failed": failure(job),
        "exit3": failure(job, exit_code=3), "exit1": failure(job),
        "conn": ConnectionError("reset"), "memory": failure(job, "memory_limit"),
    }[error_kind]
    if retried:
        countdown(manager, error, ctx(job, 1))
    else:
        assert manager.execute_hook("on_error", error, ctx(job, 1)) is error


def only_memory(error: BaseException, context: ErrorContext) -> bool:
    result = getattr(error, "result", None)
    return isinstance(result, JobResult) and result.outcome == "memory_limit"


def test_never_retried_and_poison_jobs() -> None:
    manager, store = load(retry_plugin())
    job = Job(code="1")
    manager.execute_hook("on_error", JobRejected("no"), ctx(job, 1))
    cancelled = JobFailed("x", JobResult(id=job.id, status="cancelled", outcome="cancelled"))
    manager.execute_hook("on_error", cancelled, ctx(job, 1))
    assert store.letters == []
    manager.execute_hook("on_error", failure(job, "worker_lost", None), ctx(job, 1))
    assert "kept killing its worker" in store.letters[0].reason


def test_a_job_policy_overrides_the_plugin() -> None:
    manager, store = load(retry_plugin(max_attempts=5, jitter=False))
    job = Job(code="1", retry={"max_attempts": 1})
    manager.execute_hook("on_error", failure(job), ctx(job, 1))
    assert len(store.letters) == 1
    fixed = Job(code="1", retry={"backoff": "fixed", "base_delay": 7, "max_attempts": 4})
    assert countdown(manager, failure(fixed), ctx(fixed, 2)) == 7


def test_loaded_by_name_with_config_and_runs_last() -> None:
    manager = PluginManager()
    manager.load("retry", {"max_attempts": 2, "backoff": "fixed", "base_delay": 0.5})
    plugin = manager.get("retry")
    assert isinstance(plugin, RetryPlugin) and plugin.options == RetryConfig(
        max_attempts=2, backoff="fixed", base_delay=0.5)
    assert manager.hook_plan()["on_error"][0].priority == -1000


def test_bad_config_is_refused() -> None:
    from worker.errors import PluginConfigError

    with pytest.raises(PluginConfigError, match="backoff"):
        PluginManager().load("retry", {"backoff": "quadratic"})


def test_other_operations_are_ignored() -> None:
    manager, _ = load(retry_plugin())
    error = ValueError("x")
    assert manager.execute_hook("on_error", error, ErrorContext(operation="parse")) is error


@pytest.mark.parametrize(("rule", "says"), [
    ("timout", "neither an outcome"),
    ("tests.plugins.test_retry:no_such_function", "does not resolve"),
    ("no_such_module_xyz:f", "does not resolve"),
    ("not an identifier", "neither an outcome"),
])
def test_a_bad_retry_if_rule_fails_when_the_plugin_starts(rule: str, says: str) -> None:
    from worker.errors import PluginLoadError

    with pytest.raises(PluginLoadError, match=says):
        load(RetryPlugin(), {"retry_if": [rule]})


def test_a_jobs_own_policy_may_not_name_a_callable() -> None:
    calls: list[str] = []
    globals()["record_call"] = lambda error, context: calls.append("called") or True
    manager, _ = load(retry_plugin(jitter=False, max_attempts=5))
    job = Job(code="1", retry=RetryPolicy(retry_if=["tests.plugins.test_retry:record_call"]))
    error = failure(job)
    assert manager.execute_hook("on_error", error, ctx(job, 1)) is error
    assert calls == []
    job = Job(code="1", retry=RetryPolicy(retry_if=["failed"]))
    countdown(manager, failure(job), ctx(job, 1))
