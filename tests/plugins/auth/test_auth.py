"""The auth plugin called directly: providers, token storages, refresh, signing and
every way verification fails (a real worker runs in tests/integration/test_auth.py)."""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plugins.auth import SIGN_PRIORITY, AuthConfig, AuthPlugin, auth_plugin
from plugins.auth.signing import AUTH_HEADER, AuthFailure, Keyring, Message, verify
from plugins.auth.tokens import (
    AuthenticationFailed,
    AuthToken,
    FileTokenStorage,
    HMACProvider,
    MemoryTokenStorage,
    RedisTokenStorage,
    StaticTokenProvider,
    WalletIssuer,
    WalletProvider,
    token_storage_for,
    wallet_address,
)
from tests.conftest import RedisServer, private_redis
from worker.errors import (
    ConfigurationError,
    DuplicateDelivery,
    JobDeferred,
    JobRejected,
    StartupRefused,
    StorageError,
)
from worker.models import Execution, Job, WorkerInfo
from worker.plugin.context import ExecutionContext, PublishContext, WorkerContext
from worker.plugin.manager import PluginManager
from worker.protocol import Publication
from worker.stores.deadletter import FileDeadLetterStore

UNCHECKED_TIMES = {"verify_exp": False, "verify_iat": False}
S1 = "first-secret-0123456789abcdefghijkl"
S2 = "second-secret-0123456789abcdefghijk"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job_publication(code: str = "print(1)", queue: str = "sandrun",
                    eta: datetime | None = None) -> Publication:
    job = Job(code=code)
    return Publication(task="sandrun.run_job", task_id=job.id, queue=queue,
                       args=[job.model_dump(mode="json", exclude_defaults=True)], eta=eta)


def loaded(plugin: AuthPlugin, config: AuthConfig | None = None) -> tuple[PluginManager,
                                                                          FileDeadLetterStore]:
    letters = FileDeadLetterStore(Path(tempfile.mkdtemp(prefix="sandrun-letters-")))
    manager = PluginManager(dead_letters=letters)
    manager.load(plugin, config)
    return manager, letters


def signed(plugin: AuthPlugin, publication: Publication) -> Publication:
    """What a producer sends: ``publication`` after the plugin's ``on_publish``."""
    return plugin.on_publish(publication, PublishContext())


def run(manager: PluginManager, publication: Publication, *, attempt: int = 1,
        redelivered: bool = False, consumed: tuple[str, ...] | None = None) -> None:
    """Dispatch on_execute as the task base class does for ``publication``."""
    job = Job.model_validate(publication.args[0]) if publication.task == "sandrun.run_job" \
        else None
    execution = Execution(task=publication.task, task_id=publication.task_id, job=job)
    ctx = ExecutionContext(node_id="n", pool_id="1", task_id=publication.task_id,
                           attempt=attempt, queue=publication.queue, headers=publication.headers,
                           args=publication.args, kwargs=publication.kwargs,
                           redelivered=redelivered,
                           consumed_queues=(publication.queue,) if consumed is None else consumed)
    manager.execute_hook("on_execute", execution, ctx)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def producer(clock: Clock) -> AuthPlugin:
    plugin = auth_plugin(HMACProvider("k1", S1, ttl=900, clock=clock), clock=clock,
                         auto_refresh=False)
    loaded(plugin)
    return plugin


@pytest.fixture
def worker(clock: Clock) -> tuple[PluginManager, FileDeadLetterStore, AuthPlugin]:
    plugin = AuthPlugin(clock=clock)
    manager, letters = loaded(plugin, AuthConfig.model_validate(
        {"keys": {"k1": S1, "k2": S2}}))
    return manager, letters, plugin


# -- providers and token storage -----------------------------------------------------


def test_hmac_provider_issues_a_short_lived_jwt(clock: Clock) -> None:
    token = HMACProvider("k1", S1, ttl=60, clock=clock).authenticate()
    claims = jwt.decode(token.token, S1, algorithms=["HS256"], options=UNCHECKED_TIMES)
    assert (claims["sub"], token.expires_at, token.key_id) == ("k1", clock.now + 60, "k1")
    assert jwt.get_unverified_header(token.token)["kid"] == "k1"


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 32"):
        HMACProvider("k1", "short")
    with pytest.raises(ConfigurationError, match="at least 32"):
        StaticTokenProvider("short")


def test_wallet_provider_exchanges_a_signed_message_for_a_token(clock: Clock) -> None:
    wallet = Ed25519PrivateKey.generate()
    issuer = WalletIssuer("issuer", S2, clock=clock, addresses={wallet_address(wallet)})
    token = WalletProvider(wallet, issuer, clock=clock).authenticate()
    claims = jwt.decode(token.token, S2, algorithms=["HS256"], options=UNCHECKED_TIMES)
    assert claims["sub"] == wallet_address(wallet)
    stranger = WalletProvider(Ed25519PrivateKey.generate(), issuer, clock=clock)
    with pytest.raises(AuthenticationFailed, match="not allowed"):
        stranger.authenticate()


def test_wallet_issuer_checks_signature_and_freshness(clock: Clock) -> None:
    wallet = Ed25519PrivateKey.generate()
    issuer = WalletIssuer("issuer", S2, clock=clock)
    message = f"Authenticate with Sandrun at {int(clock.now * 1000)}"
    other = Ed25519PrivateKey.generate().sign(message.encode())
    with pytest.raises(AuthenticationFailed, match="does not match"):
        issuer(wallet_address(wallet), message, other)
    stale = f"Authenticate with Sandrun at {int((clock.now - 3600) * 1000)}"
    with pytest.raises(AuthenticationFailed, match="not a current"):
        issuer(wallet_address(wallet), stale, wallet.sign(stale.encode()))


def test_file_token_storage_is_private(tmp_path: Path) -> None:
    storage = FileTokenStorage(tmp_path / "dir" / "token.json")
    assert storage.get_token() is None
    token = AuthToken(token="t" * 20, key_id="k1", expires_at=5.0)
    storage.store_token(token)
    assert storage.get_token() == token
    assert (storage.path.stat().st_mode & 0o777) == 0o600
    os.chmod(storage.path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        storage.get_token()
    storage.clear()
    assert storage.get_token() is None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with private_redis(tmp_path_factory.mktemp("auth-redis")) as server:
        yield server


def test_redis_token_storage_expires_with_the_token(redis_server: RedisServer) -> None:
    clock = Clock()
    storage = RedisTokenStorage(f"unix://{redis_server.socket}", key="t:test", clock=clock)
    token = AuthToken(token="t" * 20, key_id="k1", expires_at=clock.now + 30)
    storage.store_token(token)
    assert storage.get_token() == token
    assert 0 < storage._client.ttl("t:test") <= 30
    storage.clear()
    assert storage.get_token() is None


# -- refresh ---------------------------------------------------------------------------


class CountingProvider(HMACProvider):
    calls = 0

    def authenticate(self) -> AuthToken:
        self.calls += 1
        return super().authenticate()


def test_token_is_refreshed_within_the_threshold_only(clock: Clock) -> None:
    provider = CountingProvider("k1", S1, ttl=900, clock=clock)
    plugin = auth_plugin(provider, MemoryTokenStorage(), clock=clock, refresh_threshold=300,
                         auto_refresh=False)
    loaded(plugin)
    first = plugin.current_token()
    clock.now += 599  # 301 s before expiry: still good
    assert plugin.current_token() == first and provider.calls == 1
    clock.now += 2  # 299 s before expiry: refreshed before it expires
    second = plugin.current_token()
    assert provider.calls == 2 and second.expires_at == clock.now + 900


def test_background_refresh_runs_before_expiry(clock: Clock) -> None:
    refreshed = threading.Event()

    class Signal(CountingProvider):
        def authenticate(self) -> AuthToken:
            if self.calls:
                refreshed.set()
            return super().authenticate()

    provider = Signal("k1", S1, ttl=900, clock=clock)
    plugin = auth_plugin(provider, clock=clock, refresh_threshold=300)
    manager, _ = loaded(plugin)
    signed(plugin, job_publication())
    clock.now += 650  # inside the threshold: the refresher wakes and renews
    try:
        assert refreshed.wait(5), "the background refresher did not renew the token"
    finally:
        manager.close()
    assert plugin._stop.is_set()


def test_producer_without_provider_says_how_to_fix() -> None:
    plugin = AuthPlugin()
    loaded(plugin)
    with pytest.raises(ConfigurationError, match="provider"):
        signed(plugin, job_publication())


def test_provider_from_configuration(clock: Clock) -> None:
    plugin = AuthPlugin(clock=clock)
    loaded(plugin, AuthConfig.model_validate(
        {"provider": {"type": "static", "key_id": "s", "token": S1}}))
    assert plugin.current_token() == AuthToken(token=S1, key_id="s")


def test_on_publish_signs_a_copy_of_the_message_at_the_signing_priority(
        producer: AuthPlugin) -> None:
    original = job_publication()
    publication = signed(producer, original)
    assert AUTH_HEADER in publication.headers and original.headers == {}
    claims = jwt.decode(publication.headers[AUTH_HEADER], options={"verify_signature": False,
                                                                   **UNCHECKED_TIMES})
    assert (claims["jid"], claims["queue"]) == (original.task_id, original.queue)
    manager = PluginManager()
    manager.load(auth_plugin(HMACProvider("k1", S1), auto_refresh=False))
    assert [(e.plugin, e.priority) for e in manager.hook_plan()["on_publish"]] == [
        ("auth", SIGN_PRIORITY)]
    assert "on_submit" not in manager.hook_plan()


# -- verification ----------------------------------------------------------------------


def test_a_signed_job_verifies_and_is_counted(producer: AuthPlugin, worker: Any) -> None:
    manager, letters, plugin = worker
    run(manager, signed(producer, job_publication()))
    assert plugin.metrics.value("sandrun_auth_verified_total") == 1
    assert letters.list() == []


def rejected(manager: PluginManager, publication: Publication, reason: str, **kw: Any) -> None:
    with pytest.raises(JobRejected, match=f"authentication failed: {reason}"):
        run(manager, publication, **kw)


def test_unsigned_is_rejected_counted_and_dead_lettered(worker: Any) -> None:
    manager, letters, plugin = worker
    publication = job_publication()
    rejected(manager, publication, "unsigned")
    assert plugin.metrics.value("sandrun_auth_rejected_total", reason="unsigned") == 1
    [letter] = letters.list()
    assert (letter.id, letter.source) == (publication.task_id, "auth")
    assert "unsigned" in letter.reason and letter.job is not None


def test_forged_with_a_wrong_secret(clock: Clock, worker: Any) -> None:
    wrong = HMACProvider("k1", "not-the-real-secret-0123456789abcdef", clock=clock)
    forger = auth_plugin(wrong, clock=clock, auto_refresh=False)
    loaded(forger)
    rejected(worker[0], signed(forger, job_publication()), "bad_signature")


@pytest.mark.parametrize("header", [
    "not-a-jws", "%%%.e30.sig", 42, ["a"],
    # a header that decodes but is no object, or names its key with no string
    base64.urlsafe_b64encode(b'["kid"]').decode() + ".e30.sig",
    base64.urlsafe_b64encode(b'{"alg": "HS256", "kid": 7}').decode().rstrip("=") + ".e30.sig"])
def test_a_header_that_is_no_jws_is_malformed(worker: Any, header: object) -> None:
    publication = job_publication()
    publication.headers[AUTH_HEADER] = header
    rejected(worker[0], publication, "malformed")


def test_a_jws_whose_segments_are_not_base64url_is_malformed(producer: AuthPlugin,
                                                             worker: Any) -> None:
    """Only the key is chosen from the header before PyJWT checks the whole token."""
    publication = signed(producer, job_publication())
    head, body, signature = publication.headers[AUTH_HEADER].split(".")
    publication.headers[AUTH_HEADER] = ".".join((head, body + "!!!!", signature))
    rejected(worker[0], publication, "malformed")


def test_unknown_key_id(clock: Clock, worker: Any) -> None:
    other = auth_plugin(HMACProvider("k9", S1, clock=clock), clock=clock, auto_refresh=False)
    loaded(other)
    rejected(worker[0], signed(other, job_publication()), "unknown_key")


@pytest.mark.parametrize("change", ["args", "queue", "task_id", "task"])
def test_tampered_after_signing(producer: AuthPlugin, worker: Any, change: str) -> None:
    publication = signed(producer, job_publication("print('safe')"))
    if change == "args":
        publication.args[0]["code"] = "import os; os.system('evil')"
    elif change == "queue":
        publication.queue = "sandrun.gpu"
    elif change == "task_id":
        publication.task_id = "someone-elses-id"
        publication.args[0]["id"] = "someone-elses-id"
    else:
        publication.task = "tests.add"
        publication.args = [1, 2]
    rejected(worker[0], publication, "tampered")


def test_running_before_the_signed_eta_is_refused(producer: AuthPlugin, worker: Any,
                                                  clock: Clock) -> None:
    eta = datetime.fromtimestamp(clock.now + 600, UTC)
    publication = signed(producer, job_publication(eta=eta))
    rejected(worker[0], publication, "tampered")
    clock.now += 600
    run(worker[0], publication)


def test_expired_signature(producer: AuthPlugin, worker: Any, clock: Clock) -> None:
    publication = signed(producer, job_publication())
    clock.now += 86400 + 60
    rejected(worker[0], publication, "expired")


def dropped(manager: PluginManager, publication: Publication, **kw: Any) -> None:
    with pytest.raises(DuplicateDelivery, match="authentication failed: replayed"):
        run(manager, publication, **kw)


def test_replay_retry_and_redelivery(producer: AuthPlugin, worker: Any) -> None:
    manager, letters, _ = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    dropped(manager, publication)  # a copy: dropped, the original's result stands
    run(manager, publication, redelivered=True)  # the broker restored it after a crash
    run(manager, publication, attempt=2)  # Task.retry re-sent it
    dropped(manager, publication, attempt=2)
    dropped(manager, signed(producer, job_publication()), attempt=3)
    replays = letters.list()
    assert len(replays) == 3 and all(":replayed:" in letter.id for letter in replays)


def test_rotation_with_a_keys_file(clock: Clock, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"old": S1, "new": S2}))
    plugin = AuthPlugin(clock=clock)
    manager, _ = loaded(plugin, AuthConfig(keys_file=keys))

    def producer_with(kid: str, secret: str) -> AuthPlugin:
        made = auth_plugin(HMACProvider(kid, secret, clock=clock), clock=clock,
                           auto_refresh=False)
        loaded(made)
        return made

    old_job = signed(producer_with("old", S1), job_publication())
    run(manager, signed(producer_with("new", S2), job_publication()))
    keys.write_text(json.dumps({"new": S2}))
    os.utime(keys, (clock.now, clock.now + 10))  # make sure the change is seen
    rejected(manager, old_job, "unknown_key")


def test_wallet_signed_job(clock: Clock, worker: Any) -> None:
    wallet = Ed25519PrivateKey.generate()
    issuer = WalletIssuer("k2", S2, clock=clock)
    producer = auth_plugin(WalletProvider(wallet, issuer, clock=clock), clock=clock,
                           auto_refresh=False)
    loaded(producer)
    run(worker[0], signed(producer, job_publication()))
    thief = auth_plugin(WalletProvider(Ed25519PrivateKey.generate(), issuer, clock=clock),
                        clock=clock, auto_refresh=False)
    loaded(thief)
    stolen = signed(thief, job_publication())  # a valid wallet, but with another's token:
    claims = jwt.decode(stolen.headers[AUTH_HEADER], options={"verify_signature": False})
    own = jwt.decode(signed(producer, job_publication()).headers[AUTH_HEADER],
                     options={"verify_signature": False})
    claims["tok"] = own["tok"]
    stolen.headers[AUTH_HEADER] = jwt.encode(
        claims, thief.provider.wallet, algorithm="EdDSA",  # type: ignore[union-attr]
        headers={"kid": f"wallet:{wallet_address(thief.provider.wallet)}"})  # type: ignore[union-attr]
    rejected(worker[0], stolen, "bad_token")


def test_queues_limit_the_requirement(clock: Clock) -> None:
    plugin = AuthPlugin(clock=clock)
    manager, _ = loaded(plugin, AuthConfig.model_validate(
        {"keys": {"k1": S1}, "queues": ["secure"]}))
    run(manager, job_publication(queue="sandrun"))
    rejected(manager, job_publication(queue="secure"), "unsigned")


def test_worker_without_keys_refuses_to_start() -> None:
    plugin = AuthPlugin()
    loaded(plugin)
    with pytest.raises(StartupRefused, match="no keys"):
        plugin.on_worker_start(WorkerInfo(hostname="w", pid=1), WorkerContext(hostname="w", pid=1))


def test_verify_is_independent_of_dict_order(producer: AuthPlugin) -> None:
    publication = signed(producer, job_publication())
    reordered = [dict(reversed(list(publication.args[0].items())))]
    message = Message(publication.task, publication.task_id, publication.queue, reordered, {},
                      publication.headers)
    claims = verify(publication.headers[AUTH_HEADER], message, Keyring({"k1": S1}),
                    now=producer.clock(), leeway=5, max_ttl=86400)
    assert claims["jid"] == publication.task_id
    assert datetime.fromtimestamp(claims["exp"], UTC) - datetime.fromtimestamp(
        claims["iat"], UTC) <= timedelta(days=1, seconds=1)


def test_verification_fails_closed(producer: AuthPlugin, worker: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug or an outage inside verification must never let a job run unchecked."""
    manager, _, plugin = worker

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(plugin, "_claim_nonce", broken)
    rejected(manager, signed(producer, job_publication()), "verification_error")

    def outage(*args: Any, **kwargs: Any) -> None:
        raise StorageError("redis is down")

    monkeypatch.setattr(plugin, "_claim_nonce", outage)
    with pytest.raises(JobDeferred, match="cannot check the nonce"):
        run(manager, signed(producer, job_publication()))


def test_auth_hooks_are_never_timed_out(producer: AuthPlugin, clock: Clock) -> None:
    """A timed-out hook is skipped; for verification, skipping would mean running."""
    manager = PluginManager(hook_timeout=0.01)
    plugin = AuthPlugin(clock=clock)
    manager.load(plugin, AuthConfig.model_validate({"keys": {"k1": S1}}))

    def slow_replay_check(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.1)
        raise AuthFailure("replayed", "seen before")

    plugin._claim_nonce = slow_replay_check  # type: ignore[method-assign]
    with pytest.raises(DuplicateDelivery, match="replayed"):
        run(manager, signed(producer, job_publication()))


def test_token_storage_by_name(tmp_path: Path, redis_server: RedisServer,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    assert isinstance(token_storage_for("memory", clock), MemoryTokenStorage)
    stored = token_storage_for(f"file:{tmp_path / 'token.json'}", clock)
    assert isinstance(stored, FileTokenStorage) and stored.path == tmp_path / "token.json"
    monkeypatch.setenv("SANDRUN_BROKER_URL", f"redis+socket://{redis_server.socket}")
    shared = token_storage_for("redis", clock)
    token = AuthToken(token="t" * 32, key_id="k1", expires_at=clock.now + 60)
    shared.store_token(token)
    assert shared.get_token() == token
    monkeypatch.setenv("SANDRUN_BROKER_URL", "filesystem://")
    with pytest.raises(ConfigurationError, match="needs SANDRUN_BROKER_URL to be a Redis URL"):
        token_storage_for("redis", clock)
    with pytest.raises(ConfigurationError, match="unknown token_storage 'disk'"):
        token_storage_for("disk", clock)


def test_bad_auth_configuration_says_what_to_fix(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(ConfigurationError, match="'hmac' needs a 'secret'"):
        AuthConfig.model_validate({"provider": {"type": "hmac", "key_id": "k"}}
                                  ).provider.build(clock)  # type: ignore[union-attr]
    hmac = AuthConfig.model_validate({"provider": {"type": "hmac", "key_id": "k",
                                                   "secret": S1, "ttl": 60}})
    assert hmac.provider.build(clock).authenticate().expires_at == clock.now + 60  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="shorter than 32"):
        Keyring({"k1": "short"})
    broken = tmp_path / "keys.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigurationError, match="is not JSON"):
        Keyring({}, broken).get("k1")
    broken.write_text('["k1"]')
    with pytest.raises(ConfigurationError, match="must hold"):
        Keyring({}, broken).key_ids()


def test_a_wallet_token_stops_signing_when_it_expires(clock: Clock, worker: Any) -> None:
    wallet = Ed25519PrivateKey.generate()
    issuer = WalletIssuer("k2", S2, ttl=900, clock=clock)
    producer = auth_plugin(WalletProvider(wallet, issuer, clock=clock), clock=clock,
                           auto_refresh=False)
    loaded(producer)
    job = signed(producer, job_publication())  # the token lasts 15 minutes, the signature 24 h
    clock.now += 900 + 5 + 1
    rejected(worker[0], job, "expired")


def test_a_signature_may_not_outlast_the_workers_signature_ttl(clock: Clock,
                                                                worker: Any) -> None:
    producer = auth_plugin(HMACProvider("k1", S1, clock=clock), clock=clock, auto_refresh=False,
                           signature_ttl=10 * 365 * 86400)
    loaded(producer)
    rejected(worker[0], signed(producer, job_publication()), "overlong")
    later = job_publication(eta=datetime.fromtimestamp(clock.now + 3600, UTC))
    fine = auth_plugin(HMACProvider("k1", S1, clock=clock), clock=clock, auto_refresh=False)
    loaded(fine)
    job = signed(fine, later)  # 24 h after a 1 h ETA is within the worker's bound
    clock.now += 3600
    run(worker[0], job)


def test_a_signature_made_in_the_future_is_refused(clock: Clock, worker: Any) -> None:
    ahead = Clock(clock.now + 3600)
    producer = auth_plugin(HMACProvider("k1", S1, clock=ahead), clock=ahead, auto_refresh=False)
    loaded(producer)
    rejected(worker[0], signed(producer, job_publication()), "not_yet_valid")


def test_the_routing_key_cannot_talk_a_protected_worker_out_of_verifying(clock: Clock) -> None:
    plugin = AuthPlugin(clock=clock)
    manager, _ = loaded(plugin, AuthConfig.model_validate(
        {"keys": {"k1": S1}, "queues": ["secure"]}))
    # A broker writer pushes an unsigned job into 'secure' claiming routing key 'sandrun'.
    rejected(manager, job_publication(queue="sandrun"), "unsigned", consumed=("secure",))
    rejected(manager, job_publication(queue="sandrun"), "unsigned", consumed=())
    run(manager, job_publication(queue="sandrun"), consumed=("sandrun",))


def test_a_job_signed_for_another_queue_does_not_run_here(producer: AuthPlugin,
                                                          worker: Any) -> None:
    elsewhere = signed(producer, job_publication(queue="batch"))
    rejected(worker[0], elsewhere, "tampered", consumed=("sandrun.gpu",))
    run(worker[0], signed(producer, job_publication(queue="batch")), consumed=("batch", "x"))
