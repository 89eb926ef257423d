"""The worker registry: entries and heartbeats expire together, a heartbeat's age is read
on the broker's clock (its expiry less what remains), and what cannot be read is left out."""

from __future__ import annotations

import pytest
import redis

from worker.cli.workers import as_json, is_late, print_table
from worker.models import WorkerInfo
from worker.models.gpus import GPUCard
from worker.stores import registry

INFO = WorkerInfo(hostname="w1@h", pid=7, queues=["sandrun"], concurrency=2,
                  extra={"metrics_url": "http://h:9808/metrics"},
                  gpus=[GPUCard(type="t4", vram_gb=16)])


def heartbeat(running: int = 1, ttl: float = 60.0) -> registry.Heartbeat:
    return registry.Heartbeat(host="h", running=running, interval=1.0, ttl=ttl)


def test_a_heartbeat_refreshes_the_entry_and_its_age_comes_from_the_remaining_expiry(
        redis_client: redis.Redis) -> None:
    registry.register(redis_client, INFO, ttl=5)
    assert 0 < redis_client.pttl(registry.PREFIX + INFO.hostname) <= 5000
    registry.beat(redis_client, INFO, heartbeat(ttl=60))
    assert redis_client.pttl(registry.PREFIX + INFO.hostname) > 5000
    # as if 10 s had passed since the beat, on Redis's clock
    redis_client.pexpire(registry.BEAT_PREFIX + INFO.hostname, 50_000)
    [listed] = registry.fleet(redis_client)
    assert listed.info == INFO and listed.beat == heartbeat(ttl=60)
    assert listed.age is not None and 10 <= listed.age < 11
    assert is_late(listed, None)  # 3 x 1 s
    assert not is_late(listed, 30)


def test_the_fleet_view_json_has_every_key_and_marks_lateness(
        redis_client: redis.Redis) -> None:
    registry.beat(redis_client, INFO, heartbeat(running=2))
    [listed] = registry.fleet(redis_client)
    shown = as_json(listed, now=1000.0, override=None)
    assert shown["running_jobs"] == 2 and shown["host"] == "h" and shown["late"] is False
    assert shown["late_after_s"] == 3.0 and shown["metrics_url"] == INFO.extra["metrics_url"]
    assert shown["gpus"] == [{"type": "t4", "vram_gb": 16.0, "compute_capability": None,
                              "cuda_version": None}]
    assert shown["last_heartbeat"].startswith("1970-01-01T00:16:")


def test_a_worker_without_a_readable_heartbeat_is_listed_late(
        redis_client: redis.Redis) -> None:
    registry.register(redis_client, INFO)
    registry.register(redis_client, INFO.replace(hostname="w2@h"))
    redis_client.set(registry.BEAT_PREFIX + "w2@h", b"{not json")
    listed = registry.fleet(redis_client)
    assert [item.info.hostname for item in listed] == ["w1@h", "w2@h"]
    assert all(item.beat is None and item.age is None and is_late(item, 100) for item in listed)
    assert as_json(listed[0], 0.0, None)["running_jobs"] is None


def test_unregister_withdraws_the_entry_and_its_heartbeat(redis_client: redis.Redis) -> None:
    registry.beat(redis_client, INFO, heartbeat())
    registry.unregister(redis_client, INFO.hostname)
    assert registry.fleet(redis_client) == [] and redis_client.keys("sandrun:*") == []


def test_the_table_shows_advertised_text_as_text_not_markup(
        redis_client: redis.Redis, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # no folding of the cells
    from worker.cli import common  # the console is made once per process: make it anew

    common.console.cache_clear()
    registry.beat(redis_client, INFO.replace(hostname="[bold]w9[/bold]@h",
                                             extra={"metrics_url": "[red]x[/]"}), heartbeat())
    try:
        print_table(registry.fleet(redis_client), None)
    finally:
        common.console.cache_clear()  # later tests get a console of their own width
    out = capsys.readouterr().out
    assert "[bold]w9[/bold]@h" in out and "[red]x[/]" in out and "1 worker(s), 0 late" in out
