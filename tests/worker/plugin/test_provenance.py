"""Provenance: which fields a hook changed, and the header that carries it to the worker
(the sender's word: bounded and validated, dropped when malformed)."""

from __future__ import annotations

import json

import pytest

from worker import Execution, Job, JobResult, Publication, Transform
from worker.models import GPURequirements
from worker.models.builder import JobBuilder
from worker.plugin.provenance import HEADER_LIMIT, changed_fields, from_header, to_header


def test_fields_of_models_are_named_one_nested_level_deep() -> None:
    job = Job(code="1", gpu=GPURequirements(type="a100"))
    assert changed_fields(job, job.replace(timeout=5, labels={"a": "b"})) == [
        "timeout", "labels"]
    assert changed_fields(job, job.replace(gpu={"type": "h100"})) == ["gpu.type"]
    execution = Execution(task="t", task_id="1", job=job)
    assert changed_fields(execution, execution.model_copy(
        update={"job": job.replace(priority=9)})) == ["job.priority"]


def test_equal_copies_dataclasses_builders_and_errors() -> None:
    job = Job(code="1")
    assert changed_fields(job, job.replace()) == []
    pub = Publication("t", "1", "q", [])
    assert changed_fields(pub, Publication("t", "1", "other", [], priority=3)) == [
        "queue", "priority"]
    builder: JobBuilder[None] = JobBuilder()
    assert changed_fields(builder, builder.timeout(5).labels({"a": "b"})) == [
        "labels", "timeout"]
    assert changed_fields(ValueError("a"), ValueError("a")) == ["*"]
    assert changed_fields(job, JobResult(id="1", status="completed")) == ["*"]


def test_the_header_round_trips() -> None:
    entries = [Transform(plugin="tagger", hook="on_submit", fields=["labels"])]
    assert from_header(to_header(entries)) == entries


@pytest.mark.parametrize("raw", [
    "not json", "{}", json.dumps([{"plugin": "Bad Name", "hook": "on_submit", "fields": []}]),
    json.dumps([{"plugin": "a", "hook": "submit", "fields": []}]),
    json.dumps([{"plugin": "a", "hook": "on_submit", "fields": ["x" * 200]}]),
    json.dumps([{"plugin": "a", "hook": "on_submit", "fields": [], "extra": 1}]),
    json.dumps([{"plugin": "a", "hook": "on_submit", "fields": []}] * 65),
    "[" + " " * HEADER_LIMIT + "]", 42,
])
def test_a_malformed_or_oversized_header_is_dropped(raw: object) -> None:
    assert from_header(raw) is None
