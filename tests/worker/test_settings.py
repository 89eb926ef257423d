from __future__ import annotations

import pytest

from worker.errors import ConfigurationError
from worker.settings import check_visibility_timeout, load_settings


def test_visibility_timeout_must_exceed_longest_job() -> None:
    check_visibility_timeout(7200)
    with pytest.raises(ConfigurationError, match="at least 4200"):
        check_visibility_timeout(3600)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_GPUS", '[{"type": "t4", "count": 2}]')
    monkeypatch.setenv("SANDRUN_PRICING", '{"currency": "USD", "cpu_second": "0.01"}')
    monkeypatch.setenv("SANDRUN_MAX_ATTEMPTS", "5")
    settings = load_settings()
    assert settings.gpus and settings.gpus[0].count == 2
    assert settings.pricing and str(settings.pricing.cpu_second) == "0.01"
    assert settings.max_attempts == 5


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError, match="SANDRUN_MAX_ATTEMPTS"):
        load_settings()
