from __future__ import annotations

import pytest

from worker import BuildContext, Job, JobBuilder, PluginManager, SubmissionContext
from worker.errors import PluginConfigError

CONFIG = {"labels": {"team": "ops", "env": "prod"}, "queue": "batch", "timeout": 120,
          "memory_mb": 256}


def manager(config: dict[str, object] = CONFIG) -> PluginManager:
    m = PluginManager()
    m.load("defaults", config)
    return m


def test_on_build_fills_unset_fields_only() -> None:
    builder = JobBuilder().code("1").timeout(5).labels({"env": "dev"})
    job = manager().execute_hook("on_build", builder, BuildContext()).build()
    assert (job.timeout, job.memory_mb, job.queue) == (5, 256, "batch")
    assert job.labels == {"team": "ops", "env": "dev"}


def test_on_submit_fills_labels_and_queue() -> None:
    job = Job(code="1", labels={"team": "ml"}, queue="gpu")
    out = manager().execute_hook("on_submit", job, SubmissionContext())
    assert out.labels == {"team": "ml", "env": "prod"} and out.queue == "gpu"
    assert out.id == job.id


def test_nothing_to_fill_returns_same_job() -> None:
    job = Job(code="1")
    assert manager({}).execute_hook("on_submit", job, SubmissionContext()) is job


def test_config_is_validated() -> None:
    with pytest.raises(PluginConfigError, match="timeout"):
        manager({"timeout": 99999})
    with pytest.raises(PluginConfigError, match="lables"):
        manager({"lables": {}})
