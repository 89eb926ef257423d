"""``sandrun schedule add|list|remove``: periodic jobs, fired by ``sandrun beat``.

A schedule is kept in the broker's Redis (:mod:`worker.client.schedules`); the job
is built here as ``sandrun submit`` builds one (a job directory or ``--code``, the
client's ``on_build`` hooks), checked, and stored; every beat submits its runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from worker.cli.common import console, fail, invalid
from worker.cli.jobs import client, expires_in_option
from worker.errors import SandrunError


@click.group("schedule")
def schedule() -> None:
    """Periodic jobs: a job submitted at every time of a cron expression (UTC) by
    ``sandrun beat``; each due run is submitted once however many beats run."""


@schedule.command("add")
@click.argument("name")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--cron", required=True, help=(
    'When to run, in UTC: "*/5 * * * *" (minute hour day month weekday; a sixth field '
    "is seconds), or @hourly, @daily..."))
@click.option("--code", help="Inline code to run instead of a job directory.")
@click.option("--interpreter", default=None, help="Interpreter for --code (default python3).")
@click.option("--arg", "args", multiple=True, help="Argument for --code (repeatable).")
@click.option("--timeout", type=float, default=None, help="Job timeout in seconds.")
@click.option("--replace", is_flag=True, help="Replace a schedule of the same name.")
@expires_in_option("A run not started this long after its due time (30s, 5m, 1h) ends "
                   "expired, never run.")
@click.option("--deadline", hidden=True, help="Refused: runs have no fixed deadline.")
def schedule_add(*, name: str, path: Path | None, cron: str, code: str | None,
                 interpreter: str | None, args: tuple[str, ...], timeout: float | None,
                 replace: bool, expires_in: float | None, deadline: str | None) -> None:
    """Store schedule NAME: the job in PATH (a job directory or job.json), or --code, run
    at every --cron time. --expires-in bounds each run: not started that long after its
    due time, it ends expired."""
    if (path is None) == (code is None):
        raise click.UsageError("give a job PATH or --code, not both and not neither")
    if deadline is not None:
        raise click.UsageError("a schedule's runs have no fixed --deadline; give --expires-in "
                               "(how long after its due time a run may still start)")
    from worker.client.schedules import ScheduleStore, schedule_from

    with client() as sandrun:
        try:
            builder = sandrun.job()
            if code is not None:
                builder = builder.code(code).args(list(args))
                builder = builder.interpreter(interpreter) if interpreter else builder
            else:
                from worker.models.jobdir import manifest_fields

                assert path is not None
                builder = builder.with_fields(manifest_fields(path))
            if timeout is not None:
                builder = builder.timeout(timeout)
            made = schedule_from(name, cron, builder.build(), expires_in)
            ScheduleStore.for_client(sandrun).add(made, replace=replace)
        except SandrunError as exc:
            fail(exc)
        except ValueError as exc:  # pydantic validation of builder fields
            fail(invalid(exc))
    click.echo(f"schedule {name!r} added: {cron}")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON schedule per line.")
def schedule_list(as_json: bool) -> None:
    """The stored schedules, by name."""
    from worker.client.schedules import ScheduleStore

    with client() as sandrun:
        try:
            found = ScheduleStore.for_client(sandrun).list()
        except SandrunError as exc:
            fail(exc)
    if as_json:
        for item in found:
            click.echo(item.model_dump_json())
        return
    from rich.table import Table

    table = Table(title=f"{len(found)} schedule(s)")
    for column in ("name", "cron", "expires in", "job"):
        table.add_column(column)
    for item in found:
        what = item.job.get("entrypoint") or f"<code, {len(item.job.get('code') or '')} bytes>"
        table.add_row(item.name, item.cron, "" if item.expires_in is None
                      else f"{item.expires_in:g}s", json.dumps(what))
    console().print(table)


@schedule.command("remove")
@click.argument("name")
def schedule_remove(name: str) -> None:
    """Delete schedule NAME (a run already submitted still runs)."""
    from worker.client.schedules import ScheduleStore

    with client() as sandrun:
        try:
            removed = ScheduleStore.for_client(sandrun).remove(name)
        except SandrunError as exc:
            fail(exc)
    if not removed:
        fail(SandrunError(f"no schedule named {name!r}; see sandrun schedule list"))
    click.echo(f"schedule {name!r} removed")
