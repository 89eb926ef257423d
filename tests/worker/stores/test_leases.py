"""Running leases on a real (private) Redis: claim, compare-and-delete, renew and release."""

from __future__ import annotations

import redis

from worker.stores.attempts import Attempts
from worker.stores.leases import GRANTED, Leases, token_for


def test_the_first_claim_is_granted_and_a_second_token_is_told_who_holds_it(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, 30)
    assert leases.claim("job-a", token_for("w1@h", 11)) == GRANTED
    held = leases.claim("job-a", token_for("w2@h", 22))
    assert not held.ours and held.held_by == "w1@h:11"
    assert 29 < held.remaining <= 30
    assert redis_client.pttl("sandrun:lease:job-a") > 29_000


def test_a_lease_its_own_process_left_behind_is_granted_again_with_a_full_ttl(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, 30)
    redis_client.set("sandrun:lease:job-b", "w1@h:11", px=2000)
    assert leases.claim("job-b", "w1@h:11") == GRANTED
    assert redis_client.pttl("sandrun:lease:job-b") > 29_000


def test_release_is_compare_and_delete_a_stale_owner_cannot_free_a_new_owners_lease(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, 30)
    leases.claim("job-c", "old:1")
    redis_client.delete("sandrun:lease:job-c")  # the old owner's lease lapsed...
    assert leases.claim("job-c", "new:2") == GRANTED  # ...and a copy took it
    assert not leases.release("job-c", "old:1")
    assert redis_client.get("sandrun:lease:job-c") == b"new:2"
    assert leases.release("job-c", "new:2")
    assert redis_client.get("sandrun:lease:job-c") is None


def test_keep_renews_only_its_own_leases_and_releases_the_ended_ones_in_one_call(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, 30)
    redis_client.set("sandrun:lease:mine", "w:1", px=1000)
    redis_client.set("sandrun:lease:theirs", "other:9", px=1000)
    redis_client.set("sandrun:lease:done", "w:2", px=20_000)
    redis_client.set("sandrun:lease:taken", "other:8", px=20_000)
    replies = leases.keep({"mine": "w:1", "theirs": "w:3", "gone": "w:4"},
                          {"done": "w:2", "taken": "w:5"})
    assert replies == {"mine": 1, "theirs": -1, "gone": 0}
    assert redis_client.pttl("sandrun:lease:mine") > 29_000
    assert redis_client.pttl("sandrun:lease:theirs") <= 1000
    assert redis_client.get("sandrun:lease:done") is None
    assert redis_client.get("sandrun:lease:taken") == b"other:8"


def test_the_claim_shares_the_round_trip_that_reads_the_stored_result(
        redis_client: redis.Redis) -> None:
    leases = Leases(redis_client, 30)
    redis_client.set("celery-task-meta-job-d", b"stored")
    attempt = Attempts(redis_client).begin("job-d", 1, redelivered=True,
                                           result_key="celery-task-meta-job-d",
                                           leases=leases, token="w:1")
    assert (attempt.claim, attempt.stored, attempt.deliveries) == (GRANTED, b"stored", 2)
    other = Attempts(redis_client).begin("job-d", 1, redelivered=False,
                                         result_key="celery-task-meta-job-d",
                                         leases=leases, token="w:2")
    assert other.claim.held_by == "w:1" and other.stored == b"stored"


def test_without_redis_every_claim_is_granted_and_nothing_is_kept() -> None:
    leases = Leases(None, 30)
    assert leases.claim("job-e", "a:1") == GRANTED and leases.claim("job-e", "b:2") == GRANTED
    assert not leases.release("job-e", "a:1")
    assert leases.keep({"job-e": "a:1"}) == {}
