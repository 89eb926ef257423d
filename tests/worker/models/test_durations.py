"""Durations as typed by people, and a job's deadline and expires_in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from worker.models import Job
from worker.models.builder import JobBuilder
from worker.models.durations import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0), ("250ms", 0.25),
    ("1.5h", 5400.0), ("90", 90.0), (" 1h 5s ", 3605.0), ("0.5", 0.5), (12, 12.0),
    (timedelta(minutes=2), 120.0),
])
def test_durations_people_write_are_read_in_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "soon", "5x", "1h30", "-5", "0", "0s", "nan", "inf",
                                  "1.2.3s", "m5", True])
def test_bad_durations_are_refused_with_the_accepted_forms(text: object) -> None:
    with pytest.raises(ValueError, match="duration such as 30s"):
        parse_duration(text)  # type: ignore[arg-type]


def test_expires_in_becomes_an_absolute_deadline_when_the_job_is_built() -> None:
    before = datetime.now(UTC)
    job = JobBuilder().code("print(1)").expires_in("5m").build()
    assert job.deadline is not None
    assert before + timedelta(minutes=5) <= job.deadline <= datetime.now(UTC) + timedelta(
        minutes=5)
    assert "expires_in" not in job.model_dump()
    again = Job.model_validate(job.model_dump(mode="json", exclude_defaults=True))
    assert again.deadline == job.deadline  # what a worker reads: the same instant


def test_deadline_and_expires_in_replace_each_other_in_the_builder() -> None:
    at = datetime(2031, 1, 1, tzinfo=UTC)
    assert JobBuilder().code("1").expires_in(30).deadline(at).build().deadline == at
    job = JobBuilder().code("1").deadline(at).expires_in(30).build()
    assert job.deadline is not None and job.deadline < at


def test_a_job_refuses_both_a_deadline_and_expires_in_and_a_naive_deadline() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Job(code="1", deadline=datetime(2031, 1, 1, tzinfo=UTC), expires_in=5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="needs a timezone"):
        Job(code="1", deadline=datetime(2031, 1, 1))
    with pytest.raises(ValidationError, match="duration such as 30s"):
        Job(code="1", expires_in="later")  # type: ignore[call-arg]


def test_a_deadline_before_the_scheduled_time_is_refused() -> None:
    at = datetime(2031, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError, match="would expire before it may start"):
        Job(code="1", scheduled_time=at, deadline=at - timedelta(seconds=1))


def test_expired_compares_the_deadline_with_now() -> None:
    at = datetime(2031, 1, 1, tzinfo=UTC)
    job = Job(code="1", deadline=at)
    assert not job.expired(at - timedelta(microseconds=1))
    assert job.expired(at)
    assert not Job(code="1").expired()
