"""The attempt store and its handles, in memory and on a real (private) Redis."""

from __future__ import annotations

import pytest
import redis

from worker.stores.attempts import ATTEMPT_TTL_SECONDS, Attempts
from worker.stores.leases import Leases
from worker.stores.revoked import Revocations


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Attempts:
    if request.param == "memory":
        return Attempts(None)
    client: redis.Redis = request.getfixturevalue("redis_client")
    return Attempts(client)


def test_the_handle_owns_its_key_one_per_task_and_attempt(store: Attempts) -> None:
    first = store.begin("task-1", 1, redelivered=False)
    assert (first.task_id, first.number, first.deliveries) == ("task-1", 1, 1)
    assert first.key == "sandrun:attempts:task-1:1"
    assert store.begin("task-1", 2, redelivered=False).key == "sandrun:attempts:task-1:2"


def test_redeliveries_are_counted_per_attempt_until_it_finishes(store: Attempts) -> None:
    assert store.begin("t", 1, redelivered=False).deliveries == 1
    assert store.begin("t", 1, redelivered=True).deliveries == 2
    third = store.begin("t", 1, redelivered=True)
    assert third.deliveries == 3
    assert store.begin("t", 2, redelivered=True).deliveries == 2  # another attempt
    assert not third.finished
    third.finish()
    third.finish()  # a second finish does nothing
    assert third.finished
    assert store.begin("t", 1, redelivered=True).deliveries == 2


def test_redis_counts_only_redeliveries_with_a_ttl_and_finish_deletes(
        redis_client: redis.Redis) -> None:
    store = Attempts(redis_client)
    first = store.begin("t", 1, redelivered=False)
    assert redis_client.keys("sandrun:attempts:*") == []  # the common path writes nothing
    again = store.begin("t", 1, redelivered=True)
    assert redis_client.get(again.key) == b"1"
    assert 0 < redis_client.ttl(again.key) <= ATTEMPT_TTL_SECONDS
    first.finish()  # a first delivery has nothing to forget, and forgets nothing
    assert redis_client.exists(again.key)
    again.finish()
    assert not redis_client.exists(again.key)


def test_a_stored_result_is_read_beside_the_count(redis_client: redis.Redis) -> None:
    redis_client.set("celery-task-meta-t", b'{"status": "SUCCESS"}')
    store = Attempts(redis_client)
    assert store.begin("t", 1, redelivered=False,
                       result_key="celery-task-meta-t").stored == b'{"status": "SUCCESS"}'
    assert store.begin("t", 1, redelivered=True, result_key="missing").stored is None
    assert store.begin("t", 1, redelivered=True).stored is None


def test_a_delivery_that_started_nothing_is_taken_out_of_the_count(store: Attempts) -> None:
    store.begin("w", 1, redelivered=True)  # a crashed run's redelivery: counted
    waiting = store.begin("w", 1, redelivered=True)
    assert waiting.deliveries == 3
    waiting.uncount()  # it found the job's lease held and waits: not a crashed run
    assert store.begin("w", 1, redelivered=True).deliveries == 3
    store.begin("v", 1, redelivered=False).uncount()  # a first delivery was never counted
    assert store.begin("v", 1, redelivered=True).deliveries == 2


def test_cancel_records_share_the_round_trip_of_the_count_lease_and_result(
        redis_client: redis.Redis) -> None:
    revocations = Revocations(redis_client, ttl=60)
    leases = Leases(redis_client, 30)
    redis_client.set("celery-task-meta-job-c", b'{"status": "STARTED"}')
    store = Attempts(redis_client)
    before = redis_client.info("stats")["total_reads_processed"]
    plain = store.begin("job-c", 1, redelivered=True, result_key="celery-task-meta-job-c",
                        leases=leases, token="host:1", revocations=revocations,
                        cancel_ids=("job-c.0.replica-1", "job-c"))
    assert redis_client.info("stats")["total_reads_processed"] - before == 2  # + INFO's own
    assert (plain.revoked, plain.claim.ours, plain.deliveries) == (False, True, 2)
    assert plain.stored == b'{"status": "STARTED"}'
    revocations.add("job-c")  # the job of a replica
    leases.release("job-c", "host:1")
    cancelled = store.begin("job-c.0.replica-1", 1, redelivered=False, revocations=revocations,
                            cancel_ids=("job-c.0.replica-1", "job-c", None, "../bad id"))
    assert cancelled.revoked
    assert not store.begin("other", 1, redelivered=False, revocations=revocations,
                           cancel_ids=("other", None)).revoked


def test_cancel_records_kept_in_another_store_are_looked_up_there(
        redis_client: redis.Redis) -> None:
    revocations = Revocations(redis_client, ttl=60)
    revocations.add("t-x")
    memory = Attempts(None)  # counts in this process, cancel records in Redis
    assert memory.begin("t-x", 1, redelivered=True, revocations=revocations,
                        cancel_ids=("t-x",)).revoked
    assert not memory.begin("t-y", 1, redelivered=True, revocations=revocations,
                            cancel_ids=("t-y",)).revoked
    assert not Attempts(None).begin("t-x", 1, redelivered=False).revoked  # none asked for
