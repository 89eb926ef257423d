"""The Celery app imports and carries the settings that keep jobs from being lost."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_app_settings() -> None:
    from worker.node.app import app

    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_BROKER_URL", "redis://example.invalid:1/2")
    monkeypatch.delenv("SANDRUN_RESULT_BACKEND")
    import celeryconfig

    importlib.reload(celeryconfig)
    try:
        assert celeryconfig.broker_url == "redis://example.invalid:1/2"
        assert celeryconfig.result_backend == "redis://example.invalid:1/2"
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


@pytest.mark.parametrize(("env", "gossip", "mingle"), [
    ({}, False, False),
    ({"SANDRUN_WORKER_GOSSIP": "1", "SANDRUN_WORKER_MINGLE": "0"}, True, False),
    ({"SANDRUN_WORKER_GOSSIP": "true", "SANDRUN_WORKER_MINGLE": "yes"}, True, True),
])
def test_gossip_and_mingle_are_off_unless_the_environment_says(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], gossip: bool, mingle: bool) -> None:
    for name in ("SANDRUN_WORKER_GOSSIP", "SANDRUN_WORKER_MINGLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import celeryconfig

    importlib.reload(celeryconfig)
    try:
        assert (celeryconfig.sandrun_worker_gossip, celeryconfig.sandrun_worker_mingle) == (
            gossip, mingle)
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


def test_importing_worker_does_not_import_celery() -> None:
    code = "import sys, worker; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_celery_finds_the_app() -> None:
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "inspect", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_user_tasks_get_the_sandrun_base_class() -> None:
    from worker.node.app import app
    from worker.node.taskbase import SandrunTask

    @app.task(name="tests.unit.noop")
    def noop() -> None:
        return None

    assert isinstance(noop, SandrunTask)
    assert isinstance(app.tasks["sandrun.run_job"], SandrunTask)


@pytest.mark.parametrize(("visibility", "interval", "throttle", "mutex"),
                         [("7200", 10, 10, 300), ("600", 10, 3, 300), ("8", 1, 1, 10)])
def test_dead_workers_jobs_are_swept_back_soon_after_the_visibility_timeout(
        monkeypatch: pytest.MonkeyPatch, visibility: str, interval: int, throttle: int,
        mutex: int) -> None:
    monkeypatch.setenv("SANDRUN_VISIBILITY_TIMEOUT", visibility)
    import celeryconfig

    importlib.reload(celeryconfig)
    try:
        options = celeryconfig.broker_transport_options
        assert options["visibility_timeout"] == int(visibility)
        assert (options["unacked_restore_interval"], options["unacked_restore_throttle"],
                options["unacked_mutex_expire"]) == (interval, throttle, mutex)
        # the sweep period stays within a twentieth of the timeout, at least 1 s
        assert interval * throttle <= max(1, int(visibility) // 20)
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


def test_workers_retry_storing_results_through_a_broker_outage_producers_do_not() -> None:
    from worker.broker.factory import make_app
    from worker.node.app import app

    conf = app.conf
    assert conf.result_backend_always_retry
    # bounded: 40 tries, waits of at most 2 s (about a minute), not Celery's forever
    assert conf.result_backend_max_retries == 40
    assert conf.result_backend_max_sleep_between_retries_ms == 2000
    assert not make_app("redis://example.invalid:1/0").conf.result_backend_always_retry
