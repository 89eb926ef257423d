"""The persisted cancel records: one key per id, with a TTL, ids checked before use."""

from __future__ import annotations

import pytest
import redis

from worker.errors import InvalidJob
from worker.stores.revoked import KEY_PREFIX, Revocations, cancelled_result, check_task_id


def test_a_cancelled_id_is_remembered_with_the_result_ttl(redis_client: redis.Redis) -> None:
    records = Revocations(redis_client, ttl=120)
    assert not records.revoked(["job-1", None])
    assert records.add("job-1")
    assert redis_client.get(KEY_PREFIX + "job-1") == b"1"  # the id is the whole record
    assert 0 < redis_client.ttl(KEY_PREFIX + "job-1") <= 120
    # a replica is skipped through the job id in its body
    assert records.revoked(["job-1.0123456789abcdef.replica-2", "job-1"])
    assert not records.revoked(["job-2"])


@pytest.mark.parametrize("bad", ["", "../x", "a*", "a" * 161, "x\n", " job", "sandrun:x"])
def test_what_is_not_an_id_is_refused_and_never_looked_up(redis_client: redis.Redis,
                                                          bad: str) -> None:
    with pytest.raises(InvalidJob, match="is not a job id"):
        check_task_id(bad)
    records = Revocations(redis_client, ttl=60)
    with pytest.raises(InvalidJob):
        records.add(bad)
    redis_client.set(KEY_PREFIX + bad, b"1")
    assert not records.revoked([bad])


def test_without_redis_nothing_is_remembered() -> None:
    records = Revocations(None, ttl=60)
    assert not records.add("job-1") and not records.revoked(["job-1"])


def test_a_cancelled_result_says_cancelled() -> None:
    result = cancelled_result("job-1")
    assert (result.id, result.status, result.outcome) == ("job-1", "cancelled", "cancelled")
