"""The ``auth`` plugin: producers sign every job; workers run only what verifies.

Anyone who can write to the broker could otherwise enqueue jobs. Producer side
(``on_publish`` at priority -2000, after every hook that changes the message and
before any that holds it): make sure a valid token exists (refreshed when within
``refresh_threshold`` seconds of expiry, and in the background when
``auto_refresh`` is on), then sign the final message (body, task, id, queue,
ETA, and the job-context headers: correlation id, tenant, baggage) into the
``sandrun_auth`` header; a message that names no tenant gets the signing key's id as
its tenant, signed with the rest (see :mod:`plugins.auth.signing`). A job the
``scheduling`` plugin holds is stored signed and released with that signature.

Worker side (``on_execute``, before other plugins see the job): verify it
against the keyring (several active keys at once, for rotation), refuse a replay
(:mod:`plugins.auth.nonces`: plugin storage, Redis on a fleet, kept until the
signature expires), and reject anything else with the reason: the job never runs,
its status is ``rejected`` (a replayed copy is dropped instead, storing nothing,
so the original's result under the same id stands), it is logged
(``job_auth_rejected``), counted in ``sandrun_auth_rejected_total{reason}`` and
dead-lettered (source ``auth``). ``on_result``, and ``on_error`` for a failure no
plugin retries, record that the job reached a final result.
``queues`` limits the requirement to some queues; by default every task of the
app needs a signature.

What it does not give: availability. Whoever can write to the broker can still
delete queued jobs, or send a message under a queued job's id that is rejected
first and whose stored ``rejected`` result then answers for that id; it can never
make anything unsigned or changed run, nor a job that finished run again.

A message may legitimately arrive twice with one nonce: a retry (the next
attempt) or a redelivery after a worker died, both only while its job has no
final result. Which job first used a nonce and whether it finished is what the
plugin stored, from signed claims; the broker's redelivered flag and the retry
count are the sender's word and can only make it refuse, so a copy of a finished
job is a replay however it is marked. (A forged redelivery of a job still running
does run: it looks exactly like the redelivery of a crashed one.)

Configuration by name (``SANDRUN_PLUGINS``): ``keys`` ({key id: secret}) and/or
``keys_file`` (JSON, re-read when it changes) on workers; ``provider``
({"type": "static", "token", "key_id"} or {"type": "hmac", "key_id", "secret",
"ttl"}) and ``token_storage`` ("memory", "file:<path>", "redis") on producers.
In code: ``auth_plugin(provider=HMACProvider("k1", secret), ...)``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from dataclasses import replace
from typing import Any

from plugins.auth.config import AuthConfig
from plugins.auth.nonces import Nonces
from plugins.auth.signing import AUTH_HEADER, AuthFailure, Keyring, Message, sign, verify
from plugins.auth.tokens import AuthProvider, AuthToken, Clock, TokenStorage, token_storage_for
from worker import (
    TENANT_HEADER,
    BasePlugin,
    ConfigurationError,
    DeadLetter,
    DuplicateDelivery,
    ErrorContext,
    Execution,
    ExecutionContext,
    JobContext,
    JobDeferred,
    JobRejected,
    JobResult,
    PluginContext,
    PluginManifest,
    Publication,
    PublishContext,
    ResultContext,
    StartupRefused,
    StorageError,
    WorkerContext,
    WorkerInfo,
    hook,
)

#: ``on_publish`` priority of the signature: hooks that change the message run above
#: it, hooks that take the message over (hold it) below it, so what they store is signed.
SIGN_PRIORITY = -2000
#: ``on_result``/``on_error`` priority of the record that a job finished: below the retry
#: plugin's (-1000), so a failure that reaches it is one no plugin asked to retry.
FINISH_PRIORITY = -3000
RAW_LIMIT = 64 * 1024
STORAGE_RETRY_SECONDS = 5.0
REFRESH_POLL = 1.0  # seconds; the refresher re-reads the clock at least this often


class AuthPlugin(BasePlugin):
    """Signs jobs in producers and verifies them in workers."""

    name = "auth"
    version = "1.0.0"
    hook_timeout = 0.0  # a verification cut short must never let a job through: run inline
    manifest = PluginManifest(
        author="Sandrun", license="Apache-2.0",
        description="Sign jobs at submit; run only jobs whose signature verifies",
        keywords=["auth", "jwt", "signature"],
        apis=["on_publish", "on_execute", "on_result", "on_error", "on_worker_start"],
        # signs (a changed Publication), rejects, defers and drops deliveries, keeps
        # nonces in plugin storage, and must see the auth header and the whole job
        permissions=["job:transform", "job:veto", "storage", "secrets"],
        configuration=AuthConfig)

    def __init__(self, options: AuthConfig | None = None, *,
                 provider: AuthProvider | None = None, token_storage: TokenStorage | None = None,
                 clock: Clock = time.time) -> None:
        self._options = options
        self.options = options or AuthConfig()
        self.provider, self.tokens, self.clock = provider, token_storage, clock
        self.keyring = Keyring({})
        self.dead_letters: Any = None
        self.nonces: Nonces | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def on_init(self, context: PluginContext) -> None:
        super().on_init(context)
        self.options = self._options or context.config or AuthConfig()
        self.dead_letters = context.dead_letters
        if self.provider is None and self.options.provider is not None:
            self.provider = self.options.provider.build(self.clock)
        if self.tokens is None:
            self.tokens = token_storage_for(self.options.token_storage, self.clock)
        self.keyring = Keyring({k: v.get_secret_value() for k, v in self.options.keys.items()},
                               self.options.keys_file)
        self.nonces = Nonces(context.storage, self.clock, self.options.leeway)

    # -- producer -------------------------------------------------------------------

    def current_token(self) -> AuthToken:
        """A token that is not within ``refresh_threshold`` of expiry (refreshed if it was)."""
        if self.provider is None or self.tokens is None:
            raise ConfigurationError("the auth plugin signs jobs only with a provider; configure "
                                     "'provider' or pass provider=... to auth_plugin()")
        with self._lock:
            token = self.tokens.get_token()
            if token is None or self._due(token):
                token = self.provider.authenticate()
                self.tokens.store_token(token)
                self.logger.info("auth_token_refreshed", key_id=token.key_id,
                                 expires_at=token.expires_at)
            return token

    def _due(self, token: AuthToken) -> bool:
        return token.expires_at is not None and \
            self.clock() >= token.expires_at - self.options.refresh_threshold

    @hook(priority=SIGN_PRIORITY)
    def on_publish(self, publication: Publication, context: PublishContext) -> Publication:
        """The final message, signed (a copy: the caller's Publication is left as it is)."""
        signed = replace(publication, headers=dict(publication.headers))
        self.sign(signed)
        if self.options.auto_refresh and self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                               name="sandrun-auth-refresh")
            self._refresher.start()
        return signed

    def sign(self, publication: Publication) -> None:
        """Put the signature of ``publication`` in its headers (also for hand-sent tasks)."""
        token = self.current_token()  # says what to configure when there is no provider
        assert self.provider is not None  # current_token() checked it
        key = self.provider.signing_key(token)
        if TENANT_HEADER not in publication.headers:  # the tenant, unless one was named
            with contextlib.suppress(ValueError):  # a key id that is no valid tenant: none
                publication.headers[TENANT_HEADER] = JobContext(tenant=key.key_id).tenant
        publication.headers[AUTH_HEADER] = sign(publication, key, now=self.clock(),
                                                ttl=self.options.signature_ttl)

    def _refresh_loop(self) -> None:
        """Refresh the token shortly before it is due, until ``on_destroy``."""
        while not self._stop.is_set():
            try:
                token = self.current_token()
            except Exception as exc:  # a provider outage: log, try again soon
                self.logger.warning("auth_token_refresh_failed", error=str(exc))
                self._stop.wait(5)
                continue
            if token.expires_at is None:
                return
            due = token.expires_at - self.options.refresh_threshold - self.clock()
            self._stop.wait(min(max(due, 0.05), REFRESH_POLL))

    def on_destroy(self) -> None:
        self._stop.set()

    # -- worker ---------------------------------------------------------------------

    @hook(priority=1000)
    def on_worker_start(self, worker: WorkerInfo, context: WorkerContext) -> None:
        if not self.keyring.key_ids():
            raise StartupRefused("the auth plugin has no keys to verify jobs with; set "
                                 "'keys' or 'keys_file' in its configuration")

    @hook(priority=1000)
    def on_execute(self, execution: Execution, context: ExecutionContext) -> None:
        if self.nonces is not None:
            self.nonces.forget()
        if not self._protects(context):
            return
        message = Message(execution.task, context.task_id, context.queue, context.args,
                          context.kwargs, context.headers)
        try:
            claims = verify(context.headers.get(AUTH_HEADER), message, self.keyring,
                            now=self.clock(), leeway=self.options.leeway,
                            max_ttl=self.options.signature_ttl)
            self._check_queue(claims, context)
            self._claim_nonce(claims, execution, context)
        except AuthFailure as failure:
            self._reject(failure, execution, context)
        except StorageError as exc:  # the nonce store is down: try again, never run unchecked
            self.logger.warning("job_auth_deferred", error=str(exc))
            raise JobDeferred(STORAGE_RETRY_SECONDS, f"cannot check the nonce now ({exc})") \
                from None
        except Exception as exc:  # fail closed: an isolated hook error would let it run
            self._reject(AuthFailure("verification_error", f"{type(exc).__name__}: {exc}"),
                         execution, context)
        if self.metrics is not None:
            self.metrics.counter("sandrun_auth_verified_total", "Jobs whose signature verified"
                                 ).inc()

    def _protects(self, context: ExecutionContext) -> bool:
        """Whether this delivery must verify. The routing key is the sender's word, so
        ``queues`` is compared with the queues this worker consumes: a worker that
        serves a protected queue verifies everything (also when they are unknown)."""
        if self.options.queues is None:
            return True
        consumed = set(context.consumed_queues)
        return not consumed or bool(consumed & set(self.options.queues))

    def _check_queue(self, claims: dict[str, Any], context: ExecutionContext) -> None:
        """A job signed for one queue must not run on a worker that does not serve it."""
        if context.consumed_queues and claims.get("queue") not in context.consumed_queues:
            raise AuthFailure("tampered", f"signed for queue {claims.get('queue')!r}, but this "
                              f"worker serves {', '.join(context.consumed_queues)}")

    def _claim_nonce(self, claims: dict[str, Any], execution: Execution,
                     context: ExecutionContext) -> None:
        """Refuse a replay (see :mod:`plugins.auth.nonces`); the job id comes from the
        signed body, the attempt number and the redelivered flag from the broker."""
        if self.nonces is None:
            return
        self.nonces.claim(claims, job_id=execution.job.id if execution.job else None,
                          attempt=context.attempt, redelivered=context.redelivered)

    @hook(priority=FINISH_PRIORITY)
    def on_result(self, result: JobResult, context: ResultContext) -> None:
        """The attempt ended with the result about to be stored: no copy runs again (the
        record lands with the result where the host can)."""
        self._finish(context.task_id, context.attempt, context)

    @hook(priority=FINISH_PRIORITY)
    def on_error(self, error: BaseException, context: ErrorContext) -> None:
        """A failure that reaches this priority is not retried: the job is finished."""
        if context.operation == "execute" and context.task_id is not None:
            self._finish(context.task_id, context.attempt)

    def _finish(self, task_id: str, attempt: int, context: ResultContext | None = None) -> None:
        if self.nonces is None:
            return
        try:
            self.nonces.finish(task_id, attempt, context)
        except StorageError as exc:  # the job has ended; only replay protection is weaker
            self.logger.warning("job_auth_finish_unrecorded", task_id=task_id, error=str(exc))

    def _reject(self, failure: AuthFailure, execution: Execution,
                context: ExecutionContext) -> None:
        self.logger.warning("job_auth_rejected", reason=failure.reason, detail=failure.detail,
                            task=execution.task, attempt=context.attempt,
                            redelivered=context.redelivered)
        if self.metrics is not None:
            self.metrics.counter("sandrun_auth_rejected_total", "Jobs refused by the auth "
                                 "plugin", ("reason",)).labels(reason=failure.reason).inc()
        replayed = failure.reason == "replayed"
        if self.dead_letters is not None:  # a replay's letter must not replace the original's
            self.dead_letters.add(DeadLetter(
                id=f"{context.task_id}:replayed:{secrets.token_hex(4)}" if replayed
                else context.task_id, task=execution.task, source="auth",
                job=execution.job.model_dump(mode="json") if execution.job else None,
                reason=f"authentication failed: {failure}",
                raw=json.dumps({"args": context.args, "kwargs": context.kwargs},
                               default=str)[:RAW_LIMIT]))
        if replayed:  # the original owns this task id and its result: store nothing
            raise DuplicateDelivery(f"authentication failed: {failure}") from None
        raise JobRejected(f"authentication failed: {failure}") from None


def auth_plugin(provider: AuthProvider | None = None, token_storage: TokenStorage | None = None,
                *, clock: Clock = time.time, **options: Any) -> AuthPlugin:
    """``auth_plugin(provider=HMACProvider("k1", secret), refresh_threshold=300)``."""
    return AuthPlugin(AuthConfig(**options) if options else None, provider=provider,
                      token_storage=token_storage, clock=clock)
