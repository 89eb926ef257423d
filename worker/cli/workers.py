"""``sandrun workers``: the fleet view, every worker the registry holds and whether its
heartbeat is late.

Everything shown is what the workers advertise (:mod:`worker.stores.registry`): the
entry each writes at start (queues, concurrency, GPU cards, metrics URL) and the
heartbeat it refreshes every ``SANDRUN_HEARTBEAT_INTERVAL`` (its host, the jobs it runs
now). A worker is *late* when its last heartbeat is older than ``--late-after``
seconds, by default :data:`LATE_FACTOR` times its own interval, on the broker's clock;
a worker that advertised no heartbeat (one of an earlier release) counts as late.
``--json`` prints one document whose keys are listed in :func:`as_json`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from worker.cli.common import console, fail
from worker.cli.jobs import client
from worker.errors import ConfigurationError

if TYPE_CHECKING:
    from worker.stores.registry import Listed

#: Heartbeat intervals after which a silent worker is late, unless --late-after says.
LATE_FACTOR = 3


def late_after(listed: Listed, override: float | None) -> float | None:
    """Seconds of silence after which ``listed`` is late (None: it never beat)."""
    if override is not None:
        return override
    return LATE_FACTOR * listed.beat.interval if listed.beat is not None else None


def is_late(listed: Listed, override: float | None) -> bool:
    """True when ``listed`` has not beaten within its threshold (or never did)."""
    limit = late_after(listed, override)
    return listed.age is None or limit is None or listed.age > limit


def as_json(listed: Listed, now: float, override: float | None) -> dict[str, Any]:
    """One worker for ``--json``: these keys, always all of them (null when unknown)."""
    info, beat = listed.info, listed.beat
    last = None if listed.age is None else datetime.fromtimestamp(
        now - listed.age, UTC).isoformat(timespec="milliseconds")
    return {"name": info.hostname, "host": beat.host if beat else None, "pid": info.pid,
            "queues": info.queues, "concurrency": info.concurrency, "pool": info.pool,
            "gpus": [card.model_dump(mode="json") for card in info.gpus],
            "running_jobs": beat.running if beat else None,
            "last_heartbeat": last,
            "heartbeat_age_s": None if listed.age is None else round(listed.age, 3),
            "heartbeat_interval_s": beat.interval if beat else None,
            "late_after_s": late_after(listed, override), "late": is_late(listed, override),
            "metrics_url": info.extra.get("metrics_url"), "extra": info.extra}


def _heartbeat_cell(listed: Listed, override: float | None) -> str:
    """``2.1s ago``, in red with ``LATE`` when it is."""
    if listed.age is None:
        return "[bold red]LATE[/] (no heartbeat)"
    text = f"{listed.age:.1f}s ago"
    return f"[bold red]LATE[/] {text}" if is_late(listed, override) else text


def print_table(fleet: list[Listed], override: float | None) -> None:
    """The fleet as a table, late workers marked."""
    from rich.markup import escape
    from rich.table import Table

    late = sum(is_late(listed, override) for listed in fleet)
    rule = (f"late: no heartbeat for {override:g}s" if override is not None
            else f"late: no heartbeat for {LATE_FACTOR}x its interval")
    table = Table(title=f"{len(fleet)} worker(s), {late} late ({rule})")
    for column in ("worker", "host", "queues", "gpus", "concurrency", "running",
                   "last heartbeat", "metrics"):
        table.add_column(column, overflow="fold")
    for listed in fleet:
        info, beat = listed.info, listed.beat
        # what a worker (or anyone who can write to the broker) advertised is never markup
        table.add_row(escape(info.hostname), escape(beat.host) if beat else "?",
                      escape(", ".join(info.queues)),
                      ", ".join(card.spec() for card in info.gpus) or "-",
                      str(info.concurrency) if info.concurrency is not None else "?",
                      str(beat.running) if beat else "?", _heartbeat_cell(listed, override),
                      escape(info.extra.get("metrics_url", "-")))
    console().print(table)


@click.command()
@click.option("--late-after", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Seconds without a heartbeat after which a worker is late "
                   f"[default: {LATE_FACTOR}x its heartbeat interval].")
@click.option("--json", "as_json_flag", is_flag=True,
              help="One JSON document {\"workers\": [...]} for scripts.")
def workers(late_after: float | None, as_json_flag: bool) -> None:
    """List every registered worker: host, queues, GPU cards, concurrency, running jobs,
    last heartbeat and metrics URL; a worker whose heartbeat is late is marked."""
    from worker.broker.urls import is_redis, redis_client
    from worker.stores import registry

    with client() as sandrun:
        backend = str(sandrun.app.conf.result_backend)
        if not is_redis(backend):
            fail(ConfigurationError("listing workers needs a Redis result backend (the "
                                    "worker registry); the embedded filesystem mode has none"))
        redis = redis_client(backend)
        assert redis is not None  # is_redis(backend) was checked above
        try:
            fleet = registry.fleet(redis)
            seconds, micros = redis.time()
        finally:
            redis.close()
    if as_json_flag:
        now = seconds + micros / 1e6
        click.echo(json.dumps({"workers": [as_json(listed, now, late_after)
                                           for listed in fleet]}, indent=2))
        return
    print_table(fleet, late_after)
