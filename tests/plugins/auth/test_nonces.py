"""The auth plugin's replay check called directly: which deliveries a used nonce may run.

What a broker writer controls (the redelivered flag, the retry count) must never let
a finished job run again; what decides is the signed task and job ids and the
plugin's own record of whether that job reached a final result. A real worker
refusing a forged redelivery runs in tests/integration/test_auth.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import jwt
import pytest

from plugins.auth import AuthConfig, AuthPlugin, HMACProvider, auth_plugin
from plugins.auth.signing import AUTH_HEADER
from plugins.retry import retry_plugin
from tests.plugins.auth.test_auth import S1, Clock, dropped, job_publication, run, signed
from worker.errors import DuplicateDelivery, JobFailed, RetryRequested
from worker.models import Execution, Job, JobResult
from worker.plugin.context import ErrorContext, ResultContext
from worker.plugin.manager import PluginManager
from worker.protocol import Publication
from worker.stores.deadletter import FileDeadLetterStore
from worker.stores.storage import MemoryStorageBackend

LEEWAY = 5.0
SIGNATURE_TTL = 86400.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def producer(clock: Clock) -> AuthPlugin:
    plugin = auth_plugin(HMACProvider("k1", S1, ttl=900, clock=clock), clock=clock,
                         auto_refresh=False)
    PluginManager().load(plugin)
    return plugin


@pytest.fixture
def worker(clock: Clock) -> tuple[PluginManager, AuthPlugin]:
    """A worker's manager whose storage expires keys on the test's clock."""
    letters = FileDeadLetterStore(Path(tempfile.mkdtemp(prefix="sandrun-letters-")))
    manager = PluginManager(dead_letters=letters, storage=MemoryStorageBackend(clock))
    plugin = AuthPlugin(clock=clock)
    manager.load(plugin, AuthConfig.model_validate({"keys": {"k1": S1}}))
    return manager, plugin


def nonce_of(publication: Publication) -> str:
    return str(jwt.decode(publication.headers[AUTH_HEADER], options={"verify_signature": False})
               ["jti"])


def record(plugin: AuthPlugin, publication: Publication) -> Any:
    assert plugin.storage is not None
    return plugin.storage.get(f"nonce:{nonce_of(publication)}")


def refused(manager: PluginManager, publication: Publication, detail: str, **kw: Any) -> None:
    """The delivery is dropped as a replay (nothing stored) for the reason ``detail``."""
    with pytest.raises(DuplicateDelivery, match="authentication failed: replayed") as info:
        run(manager, publication, **kw)
    assert detail in str(info.value)


def finished(manager: PluginManager, publication: Publication, attempt: int = 1) -> None:
    """The attempt ends with a result about to be stored, as the lifecycle reports it."""
    result = JobResult(id=publication.task_id, status="completed", outcome="completed")
    manager.on_result(result, ResultContext(node_id="n", task_id=publication.task_id,
                                            attempt=attempt))


def failed(manager: PluginManager, publication: Publication, attempt: int = 1) -> None:
    """The attempt's body failed; ``on_error`` decides whether it is retried."""
    job = Job.model_validate(publication.args[0])
    error = JobFailed(f"job {job.id} ended failed",
                      JobResult(id=job.id, status="failed", outcome="failed", exit_code=1))
    manager.on_error(error, ErrorContext(
        operation="execute", attempt=attempt, job=job, task_id=publication.task_id,
        execution=Execution(task=publication.task, task_id=publication.task_id, job=job)))


def test_a_first_use_is_accepted_and_recorded_from_signed_ids(
        producer: AuthPlugin, worker: Any) -> None:
    manager, plugin = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    assert record(plugin, publication) == {"task_id": publication.task_id,
                                           "job_id": publication.args[0]["id"],
                                           "finished": False}


def test_a_redelivery_of_an_unfinished_job_is_accepted(producer: AuthPlugin,
                                                      worker: Any) -> None:
    """Its worker died mid-job: the broker hands the same message on, flagged."""
    manager, _ = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    run(manager, publication, redelivered=True)
    run(manager, publication, redelivered=True)  # the delivery cap, not auth, bounds a crash loop
    finished(manager, publication)


@pytest.mark.parametrize(("redelivered", "attempt"), [(True, 1), (False, 2), (True, 2),
                                                      (True, 3)])
def test_a_copy_of_a_finished_job_is_refused_however_it_is_marked(
        producer: AuthPlugin, worker: Any, redelivered: bool, attempt: int) -> None:
    """The flag and the retry count are the broker writer's to set: neither helps."""
    manager, _ = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    finished(manager, publication)
    refused(manager, publication, "already reached a final result",
            redelivered=redelivered, attempt=attempt)


def test_a_failure_no_plugin_retries_finishes_the_job(producer: AuthPlugin,
                                                      worker: Any) -> None:
    manager, plugin = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    failed(manager, publication)
    assert record(plugin, publication)["finished"] is True
    dropped(manager, publication, redelivered=True)


def test_a_retried_failure_leaves_the_job_open_for_its_next_attempt(
        producer: AuthPlugin, worker: Any) -> None:
    """The retry plugin asks for attempt 2 below which auth records finished jobs, so
    auth sees only the final failure; attempt 2 runs, then nothing runs again."""
    manager, _ = worker
    manager.load(retry_plugin(max_attempts=2, base_delay=0, random=lambda: 0.0))
    publication = signed(producer, job_publication())
    run(manager, publication)
    with pytest.raises(RetryRequested):
        failed(manager, publication, attempt=1)
    run(manager, publication, attempt=2)  # Task.retry re-sent it: same nonce, next attempt
    failed(manager, publication, attempt=2)  # out of attempts: final
    dropped(manager, publication, attempt=2, redelivered=True)
    dropped(manager, publication, attempt=3)


def test_a_nonce_reused_under_another_job_id_is_refused(producer: AuthPlugin, worker: Any,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A nonce is valid for one job: a second signed job carrying it is a replay."""
    manager, _ = worker
    monkeypatch.setattr("plugins.auth.signing.secrets.token_urlsafe", lambda n: "one-nonce")
    first, second = (signed(producer, job_publication(code)) for code in ("print(1)",
                                                                          "print(2)"))
    assert nonce_of(first) == nonce_of(second) and first.task_id != second.task_id
    run(manager, first)
    refused(manager, second, f"first used by task {first.task_id}", redelivered=True)
    run(manager, first, redelivered=True)  # the job that owns it still may


def test_the_redelivered_flag_on_a_first_seen_nonce_is_a_first_use(
        producer: AuthPlugin, worker: Any) -> None:
    """Nothing was lost, nothing is gained: the flag neither refuses nor excuses it."""
    manager, plugin = worker
    publication = signed(producer, job_publication())
    run(manager, publication, redelivered=True)
    assert record(plugin, publication)["finished"] is False
    finished(manager, publication)
    refused(manager, publication, "already reached a final result", redelivered=True)


def test_only_the_claimed_delivery_finishes_its_job(producer: AuthPlugin,
                                                    worker: Any) -> None:
    """Another task's result, or another attempt's, leaves the claimed job open."""
    manager, plugin = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    other = signed(producer, job_publication("print('other')"))
    finished(manager, other)
    finished(manager, publication, attempt=2)
    assert record(plugin, publication)["finished"] is False
    run(manager, other)  # a new delivery begins: the earlier claim is dropped
    finished(manager, publication)
    assert record(plugin, publication)["finished"] is False
    run(manager, publication, redelivered=True)


def test_records_expire_with_the_signature(producer: AuthPlugin, worker: Any,
                                           clock: Clock) -> None:
    """Kept for signature_ttl plus the leeway after signing (a copy after that fails
    as expired), also once the job finished later."""
    manager, plugin = worker
    publication = signed(producer, job_publication())
    signed_at = clock.now
    clock.now += 3600
    run(manager, publication)
    clock.now += 60
    finished(manager, publication)
    clock.now = signed_at + SIGNATURE_TTL + LEEWAY - 1
    assert record(plugin, publication)["finished"] is True
    clock.now = signed_at + SIGNATURE_TTL + LEEWAY
    assert record(plugin, publication) is None
    assert plugin.storage is not None and plugin.storage.keys("nonce:*") == []


class CountingStorage(MemoryStorageBackend):
    """Memory storage that records which calls each delivery makes."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls: list[str] = []

    def for_plugin(self, name: str) -> Any:
        store = super().for_plugin(name)
        calls = self.calls

        class Counted:
            def __getattr__(self, attr: str) -> Any:
                calls.append(attr)
                return getattr(store, attr)

        return Counted()


def test_a_delivery_costs_one_batch_and_its_end_one_write(producer: AuthPlugin,
                                                          clock: Clock) -> None:
    """On Redis a batch is one round trip: checking a nonce must not cost one per key."""
    storage = CountingStorage(clock)
    manager = PluginManager(storage=storage)
    manager.load(AuthPlugin(clock=clock), AuthConfig.model_validate({"keys": {"k1": S1}}))
    publication = signed(producer, job_publication())
    run(manager, publication)
    assert storage.calls == ["batch"]
    run(manager, publication, attempt=2)  # a retry reads the attempt before in the same batch
    assert storage.calls == ["batch", "batch"]
    finished(manager, publication, attempt=2)
    assert storage.calls == ["batch", "batch", "set"]


def test_a_host_that_stores_the_result_gets_the_finish_to_write_with_it(
        producer: AuthPlugin, worker: Any) -> None:
    """A worker's adapter collects the record for the result's own script: until that
    lands nothing says finished, and once it does a copy is refused."""
    manager, plugin = worker
    publication = signed(producer, job_publication())
    run(manager, publication)
    context = ResultContext(node_id="n", task_id=publication.task_id, result_writes=[])
    manager.on_result(JobResult(id=publication.task_id, status="completed",
                                outcome="completed"), context)
    [(storage, write)] = context.result_writes or []
    assert storage is plugin.nonces.storage and write.value["finished"] is True
    assert record(plugin, publication)["finished"] is False  # not written by the hook
    storage.set(write.key, write.value, write.ttl)  # what the result's script does
    refused(manager, publication, "already reached a final result", redelivered=True)
