from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RedisServer
from worker.client.client import Sandrun
from worker.errors import ConfigurationError, InvalidJob
from worker.models import MAX_TIMEOUT_SECONDS, Job
from worker.node.run_job import execute_job
from worker.node.runtime import build_runtime
from worker.settings import Settings, check_visibility_timeout, load_settings


def test_visibility_timeout_must_exceed_longest_job() -> None:
    check_visibility_timeout(7200)
    with pytest.raises(ConfigurationError, match="at least 4200"):
        check_visibility_timeout(3600)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_GPUS", '[{"type": "t4", "count": 2}]')
    monkeypatch.setenv("SANDRUN_PRICING", '{"currency": "USD", "cpu_second": "0.01"}')
    monkeypatch.setenv("SANDRUN_MAX_ATTEMPTS", "5")
    settings = load_settings()
    assert settings.gpus is not None and [c.type for c in settings.gpus] == ["t4", "t4"]
    assert settings.pricing and str(settings.pricing.cpu_second) == "0.01"
    assert settings.max_attempts == 5


def test_gpus_in_compact_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_GPUS", "a100:40:8.0:12.2*2,t4:16")
    settings = load_settings()
    assert settings.gpus is not None
    assert [(c.type, c.vram_gb, c.cuda_version) for c in settings.gpus] == [
        ("a100", 40, "12.2"), ("a100", 40, "12.2"), ("t4", 16, None)]
    monkeypatch.setenv("SANDRUN_GPUS", "a100:forty")
    with pytest.raises(ConfigurationError, match=r"SANDRUN_GPUS.*'a100:forty'"):
        load_settings()


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError, match="SANDRUN_MAX_ATTEMPTS"):
        load_settings()


@pytest.mark.parametrize(("raw", "problem"), [
    ("5", "leaves no time to renew it; use at least 10"), ("-1", "greater than or equal"),
    ("nan", "finite number"), ("1e9", "less than or equal")])
def test_a_running_lease_is_off_or_long_enough_to_renew(
        monkeypatch: pytest.MonkeyPatch, raw: str, problem: str) -> None:
    assert load_settings().running_lease_seconds == 60
    for good in ("0", "10", "600"):
        monkeypatch.setenv("SANDRUN_RUNNING_LEASE_SECONDS", good)
        assert load_settings().running_lease_seconds == float(good)
    monkeypatch.setenv("SANDRUN_RUNNING_LEASE_SECONDS", raw)
    with pytest.raises(ConfigurationError, match=f"SANDRUN_RUNNING_LEASE_SECONDS.*{problem}"):
        load_settings()


def test_leases_are_off_without_redis_or_at_zero(monkeypatch: pytest.MonkeyPatch,
                                                 redis_server: RedisServer) -> None:
    for name in ("SANDRUN_BROKER_URL", "SANDRUN_RESULT_BACKEND"):
        monkeypatch.setenv(name, f"redis+socket://{redis_server.socket}")
    assert build_runtime(load_plugins=False).leases.client is not None
    monkeypatch.setenv("SANDRUN_RUNNING_LEASE_SECONDS", "0")
    assert build_runtime(load_plugins=False).leases.client is None


def test_visibility_timeout_follows_the_longest_job_this_deployment_allows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_MAX_JOB_TIMEOUT", "5")
    monkeypatch.setenv("SANDRUN_VISIBILITY_MARGIN", "3")
    check_visibility_timeout(8)
    with pytest.raises(ConfigurationError, match=r"run for 5s .*margin is 3s.*at least 8"):
        check_visibility_timeout(7)
    check_visibility_timeout(100, Settings(max_job_timeout=90, visibility_margin=10))
    with pytest.raises(ConfigurationError, match="at least 101"):
        check_visibility_timeout(100, Settings(max_job_timeout=90.5, visibility_margin=10))


def test_max_job_timeout_cannot_exceed_what_a_job_may_ask(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("SANDRUN_MAX_JOB_TIMEOUT", str(MAX_TIMEOUT_SECONDS + 1))
    with pytest.raises(ConfigurationError, match="SANDRUN_MAX_JOB_TIMEOUT"):
        load_settings()
    monkeypatch.setenv("SANDRUN_MAX_JOB_TIMEOUT", "60")
    monkeypatch.setenv("SANDRUN_VISIBILITY_MARGIN", "0")
    with pytest.raises(ConfigurationError, match="SANDRUN_VISIBILITY_MARGIN"):
        load_settings()


def test_client_refuses_a_job_longer_than_the_deployment_allows(
        redis_server: RedisServer, redis_client: object) -> None:
    client = Sandrun.create(broker_url=f"redis+socket://{redis_server.socket}", plugins=[],
                            settings=Settings(max_job_timeout=60))
    try:
        with pytest.raises(InvalidJob, match=r"timeout: 120s is longer .*SANDRUN_MAX_JOB_TIMEOUT"):
            client.submit(Job(code="1", timeout=120))
        assert redis_server.client().llen("sandrun") == 0
        client.submit(Job(code="1", timeout=60))
        assert redis_server.client().llen("sandrun") == 1
    finally:
        client.close()


def test_worker_rejects_a_job_longer_than_it_allows_without_running_it(
        tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_RESULT_BACKEND", f"redis+socket://{redis_server.socket}")
    rt = build_runtime(Settings(max_job_timeout=5, state_dir=tmp_path), load_plugins=False)
    marker = tmp_path / "ran"
    result = execute_job(Job(code=f"open({str(marker)!r}, 'w')", timeout=6), rt)
    assert (result.status, result.outcome) == ("rejected", "rejected")
    assert result.error is not None
    assert "at most 5s (SANDRUN_MAX_JOB_TIMEOUT)" in result.error.message
    assert not marker.exists()
    assert execute_job(Job(code="print(1)", timeout=5), rt).status == "completed"
