"""Retention settings: SANDRUN_RESULT_TTL, SANDRUN_OUTPUT_TTL and SANDRUN_DEAD_LETTER_TTL
reach Celery's result_expires and the Redis keys of outputs and dead letters."""

from __future__ import annotations

import importlib
import sys

import pytest
import redis

from tests.conftest import RedisServer
from worker.errors import ConfigurationError
from worker.models import OutputFile
from worker.settings import load_settings
from worker.stores.deadletter import DeadLetter, dead_letter_store_for
from worker.stores.outputs import CollectedOutput, output_store_for


def test_the_defaults_are_a_day_a_day_and_a_week(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SANDRUN_RESULT_TTL", "SANDRUN_OUTPUT_TTL", "SANDRUN_DEAD_LETTER_TTL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.result_ttl, settings.output_ttl, settings.dead_letter_ttl) == (
        86400, 86400, 7 * 86400)


def test_celery_result_expires_follows_sandrun_result_ttl(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_RESULT_TTL", "321")
    sys.modules.pop("celeryconfig", None)
    try:
        config = importlib.import_module("celeryconfig")
        assert config.result_expires == 321
        assert load_settings().result_ttl == 321
    finally:
        sys.modules.pop("celeryconfig", None)


def test_a_bad_ttl_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_OUTPUT_TTL", "0")
    with pytest.raises(ConfigurationError, match="SANDRUN_OUTPUT_TTL"):
        load_settings()


def test_outputs_and_dead_letters_expire_after_their_ttls(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    url = f"redis+socket://{redis_server.socket}"
    output = CollectedOutput(OutputFile(path="a.txt", size=1, sha256="0" * 64), b"x")
    output_store_for(url, ttl=123).put("job1", [output])
    assert 120 <= redis_client.ttl("sandrun:output:job1") <= 123
    dead_letter_store_for(url, ttl=456).add(DeadLetter(id="job2", task="t", reason="r",
                                                        source="test"))
    assert 450 <= redis_client.ttl("sandrun:dead:job2") <= 456
