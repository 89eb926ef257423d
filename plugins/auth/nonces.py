"""The replay check of the ``auth`` plugin: which deliveries a nonce may still run.

Every signed message carries a random nonce (``jti``), and one message may rightly
reach workers more than once: the broker redelivers an attempt whose worker died
mid-job, ``Task.retry`` sends a failed job again as its next attempt. None of that
happens once the job has reached a final result.

Whatever a broker writer sends besides the signed claims is its own word: the
``redelivered`` flag and the retry count (the attempt number) are not signed, so no
value of theirs may make a finished job run again. The decision rests on the signed
claims (the nonce, ``jid``, the task id, and the job id inside the signed body) and
on what this module stored itself in the plugin's storage:

``nonce:<jti>``
    its first use: task id, job id, and whether that job reached a final result
    (:meth:`Nonces.finish`, from ``on_result`` or a failure no plugin retries).
``nonce:<jti>:<attempt>``
    how many deliveries of that attempt verified.

Both are read and written by one atomic storage batch per delivery (one Redis round
trip), and the record once more when the job finishes: on a worker, in the script
that stores the job's result (``ResultContext.store_with_result``), so the record and
the result land together and cost no round trip of their own.

A delivery is a replay when its nonce was first used under another task or job id,
or when that job has finished, whatever the flag and the retry count say. A job
that has not finished must also look like what it claims: a second delivery of
one attempt only with the broker's redelivered flag, attempt ``n`` only after
attempt ``n - 1``. Those two checks can only refuse. The flag cannot be verified,
so a writer who sets it can have a copy of a job that is still running run too
(which is all a redelivery after a crash looks like), never a copy of a finished one.

Every key expires when the signature does (``exp`` plus the leeway, which
verification keeps within ``signature_ttl`` of the job's start); a later copy fails
verification as expired.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from plugins.auth.signing import AuthFailure
from plugins.auth.tokens import Clock
from worker import Get, Incr, PluginStorage, ResultContext, Set, SetDefault


class NonceRecord(BaseModel):
    """What ``nonce:<jti>`` holds: the ids that first used the nonce (both signed) and
    whether that job has reached a final result."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task_id: str
    job_id: str | None = None
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """The nonce accepted for the delivery a thread is running, kept until its result."""

    nonce: str
    record: NonceRecord
    attempt: int
    expires_at: float  # when the signature stops verifying: exp + leeway


class Nonces:
    """The nonce records of one auth plugin (see the module docstring).

    A delivery's hooks all run in the thread that runs it (the auth plugin's hooks
    are never timed out, so never moved to another thread): :meth:`claim` remembers
    the accepted nonce per thread, for :meth:`finish` to mark when that delivery's
    result comes; :meth:`forget` drops it when the next delivery begins.
    """

    def __init__(self, storage: PluginStorage, clock: Clock, leeway: float) -> None:
        self.storage, self.clock, self.leeway = storage, clock, leeway
        self._running = threading.local()

    def claim(self, claims: dict[str, Any], *, job_id: str | None, attempt: int,
              redelivered: bool) -> None:
        """Accept this delivery's nonce, or raise ``AuthFailure("replayed")``.

        Called by ``on_execute`` once the signature verified, so ``claims`` and
        ``job_id`` (from the signed body) are the producer's; ``attempt`` and
        ``redelivered`` are the broker's and may only make it refuse. One batch
        records a first use (or reads the first use's record), counts this delivery
        of the attempt and, after the first attempt, reads the count of the one before."""
        self.forget()
        nonce = str(claims["jti"])
        mine = NonceRecord(task_id=str(claims["jid"]), job_id=job_id)
        expires_at = float(claims["exp"]) + self.leeway
        ttl = self._ttl(expires_at)
        stored, seen, *before = self.storage.batch(
            SetDefault(f"nonce:{nonce}", mine.model_dump(), ttl),
            Incr(f"nonce:{nonce}:{attempt}", ttl=ttl),
            *([Get(f"nonce:{nonce}:{attempt - 1}")] if attempt > 1 else []))
        self._check_same_unfinished_job(nonce, self._record(nonce, stored), mine)
        if seen > 1 and not redelivered:
            raise AuthFailure("replayed", f"attempt {attempt} of task {mine.task_id} was "
                              "delivered before, and this copy is not even marked as a "
                              "redelivery")
        if before and before[0] is None:
            raise AuthFailure("replayed", f"attempt {attempt} follows no attempt seen before")
        self._running.claim = Claim(nonce, mine, attempt, expires_at)

    def forget(self) -> None:
        """Drop this thread's claim: called as a delivery begins, so that a claim left by
        an earlier one (deferred or dropped by a later hook) is never finished by it."""
        self._running.claim = None

    def finish(self, task_id: str, attempt: int, context: ResultContext | None = None) -> None:
        """Record that the job this thread's delivery ran reached a final result, so that
        no copy of its message runs again. Called from ``on_result`` (with its
        ``context``: the record is written with the result, in its script where the host
        can), and from ``on_error`` when no plugin retries the failure (written now); a
        call for an attempt this thread did not claim does nothing."""
        claim: Claim | None = getattr(self._running, "claim", None)
        if claim is None or (claim.record.task_id, claim.attempt) != (task_id, attempt):
            return
        self.forget()
        finished = Set(f"nonce:{claim.nonce}", {**claim.record.model_dump(), "finished": True},
                       ttl=self._ttl(claim.expires_at))
        if context is None:
            self.storage.set(finished.key, finished.value, finished.ttl)
        else:
            context.store_with_result(self.storage, finished)

    @staticmethod
    def _record(nonce: str, stored: Any) -> NonceRecord:
        """The record of the nonce's first use (this one's, if it is the first)."""
        try:
            return NonceRecord.model_validate(stored)
        except ValidationError as exc:
            raise AuthFailure("replayed", f"nonce {nonce} was used before and its record "
                              f"cannot be read ({exc.error_count()} problem(s)); refusing "
                              "rather than guessing") from None

    @staticmethod
    def _check_same_unfinished_job(nonce: str, first: NonceRecord, mine: NonceRecord) -> None:
        """A used nonce runs again only for the job that first used it, before it finished."""
        if (first.task_id, first.job_id) != (mine.task_id, mine.job_id):
            raise AuthFailure("replayed", f"nonce {nonce} was first used by task "
                              f"{first.task_id} (job {first.job_id}); a nonce is valid for "
                              "one job only")
        if first.finished:
            raise AuthFailure("replayed", f"task {mine.task_id} already reached a final "
                              "result; a copy of its message never runs again, whatever its "
                              "redelivered flag or retry count say")

    def _ttl(self, expires_at: float) -> float:
        """Seconds until the signature stops verifying (at least 1: a TTL is positive)."""
        return max(1.0, expires_at - self.clock())
