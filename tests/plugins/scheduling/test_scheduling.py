"""The scheduling plugin called directly, against a private redis-server: priorities,
held jobs and their release, leases, backpressure and fair turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from plugins.auth import SIGN_PRIORITY, auth_plugin
from plugins.auth.signing import AUTH_HEADER, Keyring, Message, verify
from plugins.auth.tokens import HMACProvider
from plugins.scheduling import (
    HOLD_PRIORITY,
    SchedulingConfig,
    SchedulingPlugin,
    scheduling_plugin,
)
from plugins.scheduling.leases import LeaseKeeper
from plugins.scheduling.store import dump_publication, load_publication
from tests.conftest import RedisServer
from worker import ExecutionContext, Job, JobResult, PluginManager, PluginSpec
from worker.client.client import Sandrun
from worker.errors import (
    JobDeferred,
    PluginConfigError,
    PublicationHeld,
    QueueFull,
    SubmissionRejected,
)
from worker.models import Execution
from worker.plugin.context import ErrorContext, PublishContext, ResultContext, SubmissionContext
from worker.protocol import RUN_JOB, SUBMITTED_HEADER, Publication

NOW = 1_900_000_000.0
KEY = "scheduling-test-key-0123456789abcdef"
SEP = "\x06\x16"


class Sent:
    """A publisher that records what it is given (and, with ``broker``, queues it)."""

    def __init__(self, broker: redis.Redis | None = None) -> None:
        self.pubs: list[Publication] = []
        self.broker = broker
        self.lock = threading.Lock()

    def __call__(self, pub: Publication) -> None:
        with self.lock:
            self.pubs.append(pub)
        if self.broker is not None:
            self.broker.lpush(pub.queue, pub.task_id)

    @property
    def ids(self) -> list[str]:
        return [p.task_id for p in self.pubs]


@pytest.fixture
def url(redis_server: RedisServer, redis_client: redis.Redis) -> str:
    return f"redis+socket://{redis_server.socket}"


def make(url: str, sent: Sent | None = None, clock: float = NOW, **options: Any
         ) -> SchedulingPlugin:
    return scheduling_plugin(broker_url=url, clock=lambda: clock, publisher=sent, **options)


def message(job: Job, headers: dict[str, Any] | None = None) -> Publication:
    """The Publication the client builds for ``job``."""
    return Publication(task=RUN_JOB, task_id=job.id, queue=job.queue or "sandrun",
                       args=[job.model_dump(mode="json", exclude_defaults=True)],
                       eta=job.scheduled_time, headers=dict(headers or {}))


def submit(plugin: SchedulingPlugin, job: Job, headers: dict[str, Any] | None = None
           ) -> Publication | None:
    """What the client does: on_submit, build the Publication, on_publish. Returns what
    the client would send, or None when the plugin took the message over."""
    ctx = SubmissionContext(job_id=job.id)
    plugin.on_submit(job, ctx)
    try:
        return plugin.on_publish(message(job, headers), PublishContext(job=job))
    except PublicationHeld:
        return None


def sent(plugin: SchedulingPlugin, job: Job) -> Publication:
    """The message the client would send for ``job`` (the plugin must not take it over)."""
    pub = submit(plugin, job)
    assert pub is not None, "the plugin took over a message it should have let go"
    return pub


def stored(plugin: SchedulingPlugin, task_id: str) -> Publication:
    """The message the plugin holds for ``task_id``, as it will be released."""
    return load_publication(plugin.store.client.hget("sandrun:scheduling:payload", task_id))


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(NOW + seconds, UTC)


def execution(job: Job, queue: str = "sandrun") -> tuple[Execution, ExecutionContext]:
    return (Execution(task=RUN_JOB, task_id=job.id, job=job),
            ExecutionContext(node_id="n", pool_id="1", task_id=job.id, queue=queue))


# -- loading --------------------------------------------------------------------------
def test_loads_by_name_with_defaults_and_validates_its_config() -> None:
    manager = PluginManager()
    plugin = manager.load("scheduling")
    assert isinstance(plugin, SchedulingPlugin) and plugin.options == SchedulingConfig()
    manager.close()
    manager.load_all([PluginSpec("scheduling", {"strategy": "fair", "max_concurrent": 2})])
    loaded = manager.get("scheduling")
    assert isinstance(loaded, SchedulingPlugin) and loaded.options.strategy == "fair"
    with pytest.raises(PluginConfigError, match="strategy"):
        PluginManager().load("scheduling", {"strategy": "random"})


def test_its_hooks_run_where_signing_and_verification_need_them() -> None:
    manager = PluginManager(hook_timeout=0.1)
    manager.load(SchedulingPlugin())
    plan = manager.hook_plan()
    assert [(e.plugin, e.priority) for e in plan["on_execute"]] == [("scheduling", 2000)]
    assert plan["on_submit"][0].priority > -2000 and "on_beat" in plan
    assert [(e.plugin, e.priority) for e in plan["on_publish"]] == [("scheduling", -3000)]
    assert HOLD_PRIORITY < SIGN_PRIORITY  # what it holds is signed first
    assert {e.timeout for entries in plan.values() for e in entries} == {0}  # inline


def test_a_blocking_submit_outlasts_the_hosts_hook_timeout(url: str,
                                                           redis_client: redis.Redis) -> None:
    manager = PluginManager(hook_timeout=0.1)
    manager.load(make(url, queue_size=1, queue_full_policy="block", block_timeout=0.3))
    redis_client.lpush("sandrun", "m1")
    with pytest.raises(QueueFull):
        manager.execute_hook("on_submit", Job(code="1"), SubmissionContext())
    manager.close()


# -- priorities -----------------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "broker", "expected"), [
    ("priority-first", "redis://x", {0: 9, 5: 4, 9: 0}),
    ("priority-first", "amqp://x", {0: 0, 5: 5, 9: 9}),
    ("fifo", "redis://x", {0: None, 5: None, 9: None}),
])
def test_job_priority_becomes_the_brokers_priority(strategy: str, broker: str,
                                                   expected: dict[int, int | None]) -> None:
    plugin = scheduling_plugin(strategy=strategy, broker_url=broker)
    got = {p: sent(plugin, Job(code="1", priority=p)).priority for p in expected}
    assert got == expected


# -- held jobs ------------------------------------------------------------------------
def test_near_job_keeps_its_eta_and_a_far_one_is_held_out_of_the_broker(url: str) -> None:
    plugin = make(url, eta_horizon=60)
    near = sent(plugin, Job(code="1", scheduled_time=at(30)))
    assert near.eta == at(30) and plugin.store.held_ids() == []
    far = Job(code="1", scheduled_time=at(3600))
    assert submit(plugin, far) is None
    assert plugin.store.held_ids() == [far.id]
    assert plugin.store.depth("sandrun") == 0


def test_default_horizon_is_the_visibility_timeout_less_the_job_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_VISIBILITY_MARGIN", "900")
    plugin = SchedulingPlugin()
    visibility = plugin.settings.visibility_timeout
    job = Job(code="1", timeout=100, scheduled_time=at(visibility))
    assert plugin.release_time(job, NOW) == NOW + 100 + 900
    assert plugin.release_time(job.model_copy(update={"scheduled_time": at(60)}), NOW) is None


def test_a_held_job_is_released_once_unchanged_when_within_the_horizon(url: str) -> None:
    sent = Sent()
    plugin = make(url, sent, eta_horizon=60)
    job = Job(code="1", scheduled_time=at(3600), priority=8, labels={"team": "a"})
    assert submit(plugin, job, headers={"x-signature": "sig", SUBMITTED_HEADER: "1.0"}) is None
    pub = stored(plugin, job.id)
    assert plugin.process_queue(NOW + 3500) == 0 and sent.pubs == []
    assert plugin.process_queue(NOW + 3541) == 1
    assert plugin.process_queue(NOW + 3600) == 0 and len(sent.pubs) == 1
    released = sent.pubs[0]
    assert float(released.headers.pop(SUBMITTED_HEADER)) > 1.0
    pub.headers.pop(SUBMITTED_HEADER)
    assert dump_publication(released) == dump_publication(pub)
    assert (released.eta, released.priority, released.headers) == (at(3600), 1,
                                                                   {"x-signature": "sig"})
    assert plugin.store.held_ids() == [] and not plugin.store.client.hlen(
        "sandrun:scheduling:payload")


def test_concurrent_beats_release_each_held_job_exactly_once(url: str) -> None:
    sent = Sent()
    beats = [make(url, sent, eta_horizon=1, release_batch=3) for _ in range(4)]
    for n in range(40):
        assert submit(beats[0], Job(code=str(n), scheduled_time=at(100 + n))) is None
    threads = [threading.Thread(target=b.process_queue, args=(NOW + 500,)) for b in beats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent.ids) == 40 and len(set(sent.ids)) == 40


def test_a_claim_whose_publisher_died_is_published_again_after_the_claim_timeout(
        url: str) -> None:
    def broken(pub: Publication) -> None:
        raise ConnectionError("broker went away")

    plugin = make(url, eta_horizon=1, claim_timeout=30)
    job = Job(code="1", scheduled_time=at(100))
    assert submit(plugin, job) is None
    plugin.publisher = broken
    with pytest.raises(ConnectionError):
        plugin.process_queue(NOW + 100)
    sent = Sent()
    plugin.publisher = sent
    assert plugin.process_queue(NOW + 110) == 0
    assert plugin.process_queue(NOW + 131) == 1 and sent.ids == [job.id]
    assert plugin.process_queue(NOW + 200) == 0


def test_publication_round_trips_through_json() -> None:
    pub = Publication(task=RUN_JOB, task_id="j1", queue="q", args=[{"code": "1"}],
                      kwargs={"k": 1}, eta=at(5), priority=3, headers={"h": "v"})
    assert load_publication(dump_publication(pub)) == pub


def test_client_holds_a_far_job_through_its_publish_step(url: str) -> None:
    spec = PluginSpec("scheduling", {"broker_url": url, "eta_horizon": 60})
    with Sandrun.create(broker_url=url, plugins=[spec]) as client:
        run = client.submit(Job(code="1", scheduled_time=datetime.now(UTC) + timedelta(days=2)))
        plugin = client.manager.get("scheduling")
        assert isinstance(plugin, SchedulingPlugin)
        assert plugin.store.held_ids() == [run.id] and plugin.store.depth("sandrun") == 0


def test_a_held_job_is_stored_signed_and_released_with_its_signature(url: str) -> None:
    """The producer's chain: the auth plugin signs (-2000), then scheduling holds (-3000);
    the beat releases the stored message, which a worker's keyring verifies."""
    release = Sent()
    manager = PluginManager()
    manager.load_all([auth_plugin(HMACProvider("k1", KEY), auto_refresh=False),
                      make(url, release, eta_horizon=60)])
    plugin = manager.get("scheduling")
    assert isinstance(plugin, SchedulingPlugin)
    job = Job(code="1", scheduled_time=at(3600))
    with pytest.raises(PublicationHeld):
        manager.on_publish(message(job), PublishContext(job=job))
    signature = stored(plugin, job.id).headers[AUTH_HEADER]
    assert plugin.process_queue(NOW + 3541) == 1
    released = release.pubs[0]
    assert released.headers[AUTH_HEADER] == signature
    assert released.headers["sandrun_tenant"] == "k1"  # the signed context, kept as sent
    verify(signature, Message(released.task, released.task_id, released.queue, released.args,
                              released.kwargs, released.headers), Keyring({"k1": KEY}),
           now=NOW + 3600, leeway=5, max_ttl=86400)


def test_a_job_it_cannot_store_is_refused_not_sent_unheld(tmp_path: Path) -> None:
    manager = PluginManager()
    manager.load(make(f"redis+socket://{tmp_path}/nobody.sock", eta_horizon=60))
    far = Job(code="1", scheduled_time=at(3600))
    with pytest.raises(SubmissionRejected, match="could not store it to send later"):
        manager.on_publish(message(far), PublishContext(job=far))
    assert manager.hook_errors == {}


# -- concurrency ------------------------------------------------------------------------
def test_over_the_cap_a_job_is_deferred_and_a_lease_comes_back_on_result(url: str) -> None:
    plugin = make(url, max_concurrent=1, defer_seconds=2)
    first, second = Job(code="1"), Job(code="2")
    plugin.on_execute(*execution(first))
    with pytest.raises(JobDeferred) as deferred:
        plugin.on_execute(*execution(second))
    assert 2 <= deferred.value.countdown <= 3 and "max_concurrent" in str(deferred.value)
    plugin.on_result(JobResult(id=first.id, status="rejected"),
                     ResultContext(node_id="n", task_id=first.id, job=first))
    plugin.on_execute(*execution(second))
    assert plugin.semaphore.holders("queue:sandrun") == [second.id]
    plugin.on_error(RuntimeError("x"), ErrorContext(operation="execute", task_id=second.id))
    assert plugin.semaphore.holders("queue:sandrun") == []
    plugin.on_destroy()


def test_the_cap_counts_per_queue_or_per_label(url: str) -> None:
    per_queue = make(url, max_concurrent=1)
    per_queue.on_execute(*execution(Job(code="1"), "a"))
    per_queue.on_execute(*execution(Job(code="1"), "b"))
    per_label = make(url, max_concurrent=1, concurrency_label="tenant")
    per_label.on_execute(*execution(Job(code="1", labels={"tenant": "x"}), "a"))
    per_label.on_execute(*execution(Job(code="1", labels={"tenant": "y"}), "a"))
    with pytest.raises(JobDeferred):
        per_label.on_execute(*execution(Job(code="1", labels={"tenant": "x"}), "b"))
    per_queue.on_destroy()
    per_label.on_destroy()


def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_lease_nobody_renews_expires_and_a_kept_one_does_not(url: str) -> None:
    plugin = make(url, max_concurrent=1, lease_ttl=0.3)
    leases, client = "sandrun:scheduling:leases:queue:sandrun", plugin.semaphore.client

    def redis_ms() -> int:  # leases expire on the Redis clock, in milliseconds
        seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def expiry(job: Job) -> float:
        score = client.zscore(leases, job.id)
        assert score is not None, f"{job.id} holds no lease"
        return float(score)

    dead = Job(code="1")
    assert plugin.semaphore.acquire("queue:sandrun", dead.id, 1, 0.3)  # its worker died
    with pytest.raises(JobDeferred):
        plugin.on_execute(*execution(Job(code="2")))
    lapsed = expiry(dead)
    until(lambda: redis_ms() > lapsed, "the Redis clock never passed the dead lease's expiry")
    alive = Job(code="3")
    plugin.on_execute(*execution(alive))
    first = expiry(alive)
    # Past the first expiry of the kept lease, the keeper (every 0.1 s) has pushed it out.
    until(lambda: redis_ms() > first and expiry(alive) > redis_ms(),
          "the keeper never renewed the lease")
    assert plugin.semaphore.holders("queue:sandrun") == [alive.id]
    with pytest.raises(JobDeferred):
        plugin.on_execute(*execution(Job(code="4")))
    plugin.on_destroy()
    assert plugin.semaphore.holders("queue:sandrun") == []


def test_the_keeper_stops_renewing_a_lease_past_its_jobs_timeout(url: str) -> None:
    plugin = make(url)
    clock = [0.0]
    keeper = LeaseKeeper(lambda: plugin.semaphore, 5, clock=lambda: clock[0])
    plugin.semaphore.acquire("s", "j", 1, 5)
    keeper.add("j", "s", job_timeout=10)
    keeper.renew_all()
    assert keeper.held() == {"j": "s"}
    clock[0] = 10 + LeaseKeeper.GRACE_SECONDS + 1
    keeper.renew_all()
    assert keeper.held() == {}
    keeper.close()


# -- backpressure -----------------------------------------------------------------------
def test_a_full_queue_rejects_a_submit(url: str, redis_client: redis.Redis) -> None:
    plugin = make(url, queue_size=3)
    redis_client.lpush("sandrun", "m1", "m2")
    redis_client.lpush(f"sandrun{SEP}4", "m3")
    with pytest.raises(QueueFull, match=r"'sandrun' already holds 3 job.*queue_size is 3"):
        submit(plugin, Job(code="1"))
    submit(plugin, Job(code="1", queue="other"))
    submit(plugin, Job(code="1", scheduled_time=at(86400)))  # held: not queued yet


def test_a_full_queue_blocks_a_submit_until_it_drains_or_the_timeout(
        url: str, redis_client: redis.Redis) -> None:
    plugin = make(url, queue_size=1, queue_full_policy="block", block_timeout=0.3)
    redis_client.lpush("sandrun", "m1")
    started = time.monotonic()
    with pytest.raises(QueueFull, match=r"after waiting 0\.3s"):
        submit(plugin, Job(code="1"))
    assert 0.2 <= time.monotonic() - started < 1.5
    plugin = make(url, queue_size=1, queue_full_policy="block", block_timeout=5)
    threading.Timer(0.3, redis_client.rpop, ("sandrun",)).start()
    started = time.monotonic()
    submit(plugin, Job(code="1"))
    assert 0.25 <= time.monotonic() - started < 3


# -- fairness -----------------------------------------------------------------------------
def test_fair_queues_take_tenants_in_turn(url: str, redis_client: redis.Redis) -> None:
    sent = Sent(broker=redis_client)
    plugin = make(url, sent, strategy="fair", fair_window=1)

    def tenant(name: str, n: int) -> None:
        for i in range(n):
            assert submit(plugin, Job(code="1", id=f"{name}{i}", labels={"tenant": name})) is None

    tenant("a", 4)
    tenant("b", 2)
    assert sent.ids == ["a0"] and plugin.store.depth("sandrun") == 6
    while redis_client.rpop("sandrun"):  # a worker takes the job, then it ends
        plugin.on_result(JobResult(id="x", status="completed"),
                         ResultContext(node_id="n", task_id="x", job=Job(code="1")))
    assert sent.ids == ["a0", "a1", "b0", "a2", "b1", "a3"]


def test_a_stale_fair_claim_goes_back_to_the_front_of_its_tenants_turn(
        url: str, redis_client: redis.Redis) -> None:
    plugin = make(url, strategy="fair", fair_window=5, claim_timeout=10)
    for name in ("a0", "a1"):
        plugin.store.enqueue_fair(Publication(task=RUN_JOB, task_id=name, queue="q", args=[]),
                                  "a")
    claimed = plugin.store.claim_fair("q", 5, NOW)
    assert claimed is not None and claimed[0] == "a0"
    assert plugin.store.pending("q") == 2
    sent = Sent(broker=redis_client)
    plugin.publisher = sent
    assert plugin.process_queue(NOW + 11) == 2 and sent.ids == ["a0", "a1"]
