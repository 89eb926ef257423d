"""The ``retry`` plugin: failed jobs run again later, then go to the dead-letter store.

Options (the seed's, plus jitter): ``max_attempts`` (3), ``backoff`` fixed | linear
| exponential (exponential), ``base_delay`` (1 s), ``max_delay`` (30 s),
``retry_if`` (exception type names, job outcomes such as ``timeout`` or
``memory_limit``, exit codes, or a ``"module:callable"`` predicate),
``on_retry`` (a callable, or ``"module:callable"`` in configuration) and
``jitter`` (full jitter, default on for exponential backoff). A job may carry
its own ``retry`` policy, which wins for that job.

How it maps onto Celery: ``on_error`` raises ``RetryRequested(countdown)`` and
the task base class calls ``Task.retry(countdown=...)``: the job is re-published
with its attempt number, and no worker slot sleeps through the delay. Delay
before retry ``n`` (0-based): fixed ``base``; linear ``base x (n+1)``;
exponential ``min(base x 2^n, max)``; then, with jitter, a uniform draw in
``[0, delay)``. When attempts run out, or a job keeps killing its worker, the
last ``on_error`` puts it in the dead-letter store with its whole history.
It runs after the other ``on_error`` hooks (priority -1000), so they still see every
failure; only the ``auth`` plugin's record that a job finished runs below it, to see
just the failures no plugin retries.

``retry_if`` rules are resolved when the plugin starts (``on_init``): a
``"module:callable"`` that does not import, or a lowercase word that is not an
outcome (``"timout"``), stops the process with a message naming the rule, not
at the first failing job. A job's own policy may name outcomes, exit codes and
exception names, never callables: a producer must not make a worker import and
call code of its choosing (such a rule is logged and never matches).
"""

from __future__ import annotations

import importlib
import random as random_module
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ConfigDict

from worker import (
    BasePlugin,
    ConfigurationError,
    DeadLetter,
    ErrorContext,
    InvalidJob,
    JobRejected,
    JobResult,
    PaymentRejected,
    PluginContext,
    PluginManifest,
    ResultContext,
    RetryPolicy,
    RetryRequested,
)

NEVER_RETRIED = (JobRejected, InvalidJob, PaymentRejected)
FINAL_OUTCOMES = frozenset({"rejected", "cancelled", "unsatisfiable", "isolation_unavailable",
                            "environment_error"})
OUTCOMES = frozenset({"failed", "timeout", "memory_limit", "cpu_limit", "signal",
                      "worker_lost"})
HISTORY_TTL = 7 * 24 * 3600
Rule = Callable[[BaseException, Any, ErrorContext], bool]


class RetryConfig(RetryPolicy):
    """The plugin's configuration: a default retry policy plus dead-lettering."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    on_retry: str | None = None
    dead_letter: bool = True


def load_callable(ref: str) -> Callable[..., Any]:
    """Import ``"module:callable"``."""
    module, _, attr = ref.partition(":")
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{ref!r} is not callable")
    return target  # type: ignore[no-any-return]


def compile_rule(rule: str | int, *, callables: bool = True) -> Rule:
    """A predicate for one ``retry_if`` rule; ConfigurationError for a rule that cannot be."""
    if isinstance(rule, int):
        return lambda error, result, context: (isinstance(result, JobResult)
                                               and result.exit_code == rule)
    if rule in OUTCOMES:
        return lambda error, result, context: (isinstance(result, JobResult)
                                               and result.outcome == rule)
    if ":" in rule:
        if not callables:
            raise ConfigurationError(f"retry_if rule {rule!r}: a job's own policy may not name "
                                     "a callable; configure it in the retry plugin instead")
        try:
            predicate = load_callable(rule)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"retry_if rule {rule!r} does not resolve to a callable "
                                     f"({type(exc).__name__}: {exc}); write 'module:function'"
                                     ) from None
        return lambda error, result, context: bool(predicate(error, context))
    if not rule.isidentifier() or rule.islower():
        raise ConfigurationError(
            f"retry_if rule {rule!r} is neither an outcome ({', '.join(sorted(OUTCOMES))}), an "
            "exit code, an exception class name (such as TimeoutError) nor 'module:callable'")
    return lambda error, result, context: rule in {c.__name__ for c in type(error).__mro__}


class RetryPlugin(BasePlugin):
    """Turns failures into delayed Celery retries, then dead letters."""

    name = "retry"
    version = "1.0.0"
    priority = -1000
    hook_timeout = 0  # bounded hooks: run inline, no timeout thread (see worker.plugin.dispatch)
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="Retry failed jobs with backoff; dead-letter them when attempts run out",
        keywords=["retry", "backoff", "dead-letter"], apis=["on_error", "on_result"],
        # asks for retries, keeps attempt history, dead-letters whole jobs (for replay)
        permissions=["result:transform", "storage", "secrets"], configuration=RetryConfig)

    def __init__(self, options: RetryConfig | None = None, *,
                 on_retry: Callable[[int, BaseException], None] | None = None,
                 random: Callable[[], float] = random_module.random) -> None:
        self._options = options
        self._on_retry = on_retry
        self.random = random
        self.options = options or RetryConfig()
        self.rules = [compile_rule(rule) for rule in self.options.retry_if]

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or RetryConfig()
        self.rules = [compile_rule(rule) for rule in self.options.retry_if]
        if self._on_retry is None and self.options.on_retry:
            self._on_retry = load_callable(self.options.on_retry)
        self.dead_letters = context.dead_letters

    def retryable(self, error: BaseException, context: ErrorContext, policy: RetryPolicy) -> bool:
        """Whether ``error`` may be retried under ``policy``."""
        result = getattr(error, "result", None)
        if isinstance(error, NEVER_RETRIED):
            return False
        if isinstance(result, JobResult) and (result.status in FINAL_OUTCOMES or
                                              result.outcome in FINAL_OUTCOMES | {"worker_lost"}):
            return False
        rules = self.rules if policy is self.options else self._job_rules(policy)
        return not policy.retry_if or any(rule(error, result, context) for rule in rules)

    def _job_rules(self, policy: RetryPolicy) -> list[Rule]:
        """A job's own rules, resolved per failure; one that cannot be never matches."""
        rules = []
        for rule in policy.retry_if:
            try:
                rules.append(compile_rule(rule, callables=False))
            except ConfigurationError as exc:
                self.logger.warning("retry_rule_refused", error=str(exc))
        return rules

    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        if context.operation != "execute" or context.task_id is None:
            return
        policy = context.job.retry if context.job and context.job.retry else self.options
        history = self._remember(error, context)
        result = getattr(error, "result", None)
        if isinstance(result, JobResult) and result.outcome == "worker_lost":
            self._bury(error, context, history, "it kept killing its worker process")
            return
        if not self.retryable(error, context, policy):
            return
        if context.attempt >= policy.max_attempts:
            self._bury(error, context, history, f"gave up after {context.attempt} attempt(s)")
            return
        delay = policy.delay(context.attempt - 1)
        if policy.jittered:
            delay *= self.random()
        if self._on_retry is not None:
            self._on_retry(context.attempt + 1, error)
        self.logger.info("job_retry_scheduled", next_attempt=context.attempt + 1,
                         countdown=round(delay, 3), error_type=type(error).__name__)
        raise RetryRequested(delay, f"attempt {context.attempt} failed: {error}")

    def on_result(self, result: JobResult, context: ResultContext) -> None:
        if result.status == "completed" and self.storage is not None and result.attempts > 1:
            self.storage.delete(f"history:{context.task_id}")

    def _remember(self, error: BaseException, context: ErrorContext) -> list[dict[str, Any]]:
        result = getattr(error, "result", None)
        entry = {"attempt": context.attempt, "error_type": type(error).__name__,
                 "message": str(error), "at": datetime.now(UTC).isoformat(),
                 "outcome": result.outcome if isinstance(result, JobResult) else None,
                 "exit_code": result.exit_code if isinstance(result, JobResult) else None}
        if self.storage is None:
            return [entry]
        key = f"history:{context.task_id}"
        history: list[dict[str, Any]] = [*self.storage.get(key, []), entry]
        self.storage.set(key, history, ttl=HISTORY_TTL)
        return history

    def _bury(self, error: BaseException, context: ErrorContext,
              history: list[dict[str, Any]], why: str) -> None:
        if not self.options.dead_letter or self.dead_letters is None:
            return
        execution = context.execution
        job = context.job
        self.dead_letters.add(DeadLetter(
            id=job.id if job else str(context.task_id), source="retry",
            task=execution.task if execution else "sandrun.run_job",
            reason=f"{why}: {type(error).__name__}: {error}",
            job=job.model_dump(mode="json") if job else None,
            task_args=execution.task_args if execution else [],
            task_kwargs=execution.task_kwargs if execution else {}, attempts=history))
        self.logger.warning("job_dead_lettered", attempts=len(history), reason=why)
        if self.storage is not None:
            self.storage.delete(f"history:{context.task_id}")


def retry_plugin(*, on_retry: Callable[[int, BaseException], None] | None = None,
                 random: Callable[[], float] = random_module.random,
                 **options: Any) -> RetryPlugin:
    """``retry_plugin(max_attempts=5, backoff="linear", base_delay=2, retry_if=["timeout"])``."""
    return RetryPlugin(RetryConfig(**options) if options else None, on_retry=on_retry,
                       random=random)
