"""``sandrun dead list|show|replay``: jobs that will not be tried again.

Every command talks to the broker; the stores, the models and rich are imported
inside them, so that ``sandrun --help`` does not pay for them.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from worker.cli.common import EXIT_JOB_FAILED, console, fail
from worker.cli.jobs import client
from worker.errors import SandrunError

if TYPE_CHECKING:
    from worker.client.client import Sandrun
    from worker.stores.deadletter import DeadLetter


@click.group()
def dead() -> None:
    """Jobs that will not be tried again (dead letters)."""


@dead.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON letter per line.")
def dead_list(limit: int, as_json: bool) -> None:
    """Newest dead letters first."""
    from rich.table import Table

    from worker.stores.deadletter import dead_letter_store_for

    with client() as sandrun:
        letters = dead_letter_store_for(str(sandrun.app.conf.result_backend),
                                       ttl=sandrun.settings.dead_letter_ttl).list(limit)
    if as_json:
        for letter in letters:
            click.echo(letter.model_dump_json())
        return
    table = Table(title=f"{len(letters)} dead letter(s)")
    for column in ("id", "task", "attempts", "source", "reason", "dead at"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(letter.id, letter.task, str(len(letter.attempts)), letter.source,
                      letter.reason, letter.dead_at.isoformat(timespec="seconds"))
    console().print(table)


@dead.command("show")
@click.argument("letter_id")
def dead_show(letter_id: str) -> None:
    """One dead letter with its whole attempt history, as JSON."""
    from worker.stores.deadletter import dead_letter_store_for

    with client() as sandrun:
        letter = dead_letter_store_for(str(sandrun.app.conf.result_backend),
                                       ttl=sandrun.settings.dead_letter_ttl).get(letter_id)
    if letter is None:
        fail(SandrunError(f"no dead letter {letter_id!r} (expired, replayed, or never dead)"))
    click.echo(json.dumps(letter.model_dump(mode="json"), indent=2))


def replay_letter(sandrun: Sandrun, letter: DeadLetter) -> str:
    """Publish a dead job again under its own id (its old result is forgotten first), with
    the correlation id, tenant and baggage it had."""
    if letter.source == "broker" or letter.raw is not None:
        raise SandrunError("it is a message the worker could not decode or did not know; "
                           "fix the producer and send it again (its raw body is in "
                           "'sandrun dead show')")
    from worker.models import Job

    sandrun.app.backend.forget(letter.id)
    if letter.job is not None:
        context = letter.context
        if context is None:
            return sandrun.submit(Job.model_validate(letter.job)).id
        return sandrun.submit(Job.model_validate(letter.job), tenant=context.tenant,
                              correlation_id=context.correlation_id,
                              baggage=context.baggage).id
    handle = sandrun.app.send_task(letter.task, args=letter.task_args, kwargs=letter.task_kwargs,
                                   task_id=letter.id)
    return str(handle.id)


@dead.command("replay")
@click.argument("letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dead_replay(letter_id: str | None, replay_all: bool) -> None:
    """Submit dead jobs again; each replayed letter is removed from the store."""
    if bool(letter_id) == replay_all:
        raise click.UsageError("give a dead letter ID or --all")
    from worker.stores.deadletter import dead_letter_store_for

    failures = 0
    with client() as sandrun:
        store = dead_letter_store_for(str(sandrun.app.conf.result_backend),
                                       ttl=sandrun.settings.dead_letter_ttl)
        letters = store.list(10_000) if replay_all else [store.get(str(letter_id))]
        if letters == [None]:
            fail(SandrunError(f"no dead letter {letter_id!r}"))
        for letter in letters:
            assert letter is not None
            try:
                new_id = replay_letter(sandrun, letter)
            except SandrunError as exc:
                failures += 1
                console().print(f"[red]{letter.id}: not replayed: {exc}[/]", highlight=False)
                continue
            store.remove(letter.id, only=letter)  # not a new letter of the replayed job
            click.echo(f"replayed {letter.id} as {new_id}")
    sys.exit(EXIT_JOB_FAILED if failures else 0)
