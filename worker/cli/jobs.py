"""``sandrun submit|status|result|logs|cancel|download``: producing and following jobs.

The client (Celery, kombu, redis), the models and rich are imported inside the
commands, so that ``sandrun --help`` and the commands of other modules, which
import this one for :func:`client`, do not pay for them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from worker.cli.common import EXIT_JOB_FAILED, EXIT_OK, console, fail, invalid, set_up_uncollected
from worker.errors import SandrunError

if TYPE_CHECKING:
    from worker.client.client import JobExecution, Sandrun
    from worker.models import JobResult
    from worker.models.builder import JobBuilder

T = TypeVar("T")


def _make_client() -> Sandrun:
    from worker.client.client import Sandrun

    return Sandrun.create()


@contextmanager
def client() -> Iterator[Sandrun]:
    """A client from the environment, made without collecting the objects its imports
    make (they live as long as the command); errors become clean exits."""
    try:
        with set_up_uncollected(_make_client) as made, made:
            yield made
    except SandrunError as exc:
        fail(exc)


def print_result(res: JobResult, as_json: bool) -> None:
    """One result: JSON alone on stdout, or a short human summary."""
    if as_json:
        click.echo(res.model_dump_json())
        return
    detail = f"exit {res.exit_code}" if res.exit_code is not None else (res.outcome or "")
    # click, not rich: the one styled word is not worth importing rich for
    click.echo(f"{res.id}  {click.style(res.status, bold=True)}  {detail}  "
               f"{res.execution_time or 0:.2f}s")
    if res.error:
        click.echo(f"  {res.error.type}: {res.error.message}")
    vote = res.consensus
    if vote is not None and vote.outcome != "replica":
        click.echo(f"  consensus {vote.k}-of-{vote.n} {vote.outcome}")
        for replica in vote.replicas:
            click.echo(f"    replica {replica.replica}  {replica.node or '-'}  {replica.status}"
                       f"  {replica.digest or '-'}")


def wait_all(runs: list[JobExecution], timeout: float | None, quiet: bool) -> list[JobResult]:
    """Wait for every run, with a progress bar when there are several and output is for people."""
    if quiet or len(runs) == 1:
        return [run.wait(timeout) for run in runs]
    from rich.progress import Progress

    results = []
    with Progress(console=console(), transient=True) as progress:
        task = progress.add_task("waiting for jobs", total=len(runs))
        for run in runs:
            results.append(run.wait(timeout))
            progress.advance(task)
    return results


def _builders(sandrun: Sandrun, paths: tuple[Path, ...], code: str | None,
              interpreter: str | None, args: tuple[str, ...], *, timeout: float | None,
              consensus: str | None, expires_in: float | None = None,
              deadline: datetime | None = None) -> list[JobBuilder[JobExecution]]:
    """One builder per job ``sandrun submit`` was given, with its options applied."""
    builders = []
    if code is not None:
        builder = sandrun.job().code(code).args(list(args))
        builders.append(builder.interpreter(interpreter) if interpreter else builder)
    if paths:
        from worker.models.jobdir import manifest_fields

        builders += [sandrun.job().with_fields(manifest_fields(p)) for p in paths]
    if timeout is not None:
        builders = [b.timeout(timeout) for b in builders]
    if consensus is not None:
        builders = [b.consensus(consensus) for b in builders]
    return [with_expiry(b, expires_in, deadline) for b in builders]
def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--expires-in``: seconds, or a duration such as 30s, 5m, 1h30m."""
    if value is None:
        return None
    from worker.models.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _instant(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """``--deadline``: an ISO 8601 time with its timezone (``2030-01-01T12:00:00Z``)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as "
                                 "2030-01-01T12:00:00Z") from None
    if when.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; add one, e.g. Z or +02:00")
    return when


def expires_in_option(help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``--expires-in DURATION`` (read by :func:`~worker.models.durations.parse_duration`)."""
    return click.option("--expires-in", callback=_duration, metavar="DURATION", help=help)


def expiry_options(func: Callable[..., None]) -> Callable[..., None]:
    """``--expires-in`` and ``--deadline`` of ``submit``."""
    func = click.option("--deadline", callback=_instant, metavar="ISO8601", help=(
        "Never start the job after this time (with a timezone); it ends expired."))(func)
    return expires_in_option("Never start the job later than this after submit (30s, 5m, "
                             "1h); it ends expired.")(func)


def with_expiry(builder: JobBuilder[T], expires_in: float | None,
                deadline: datetime | None) -> JobBuilder[T]:
    """``builder`` with the expiry the options gave (at most one of them)."""
    if expires_in is not None and deadline is not None:
        raise click.UsageError("give --expires-in or --deadline, not both")
    if expires_in is not None:
        return builder.expires_in(expires_in)
    return builder if deadline is None else builder.deadline(deadline)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--code", help="Inline code to run instead of a job directory.")
@click.option("--interpreter", default=None, help="Interpreter for --code (default python3).")
@click.option("--arg", "args", multiple=True, help="Argument for --code (repeatable).")
@click.option("--timeout", type=float, default=None, help="Job timeout in seconds.")
@click.option("--consensus", default=None, metavar="LEVEL",
              help="Run as k-of-n replicas: none, low, medium, high or k-of-n (2-of-3).")
@click.option("--wait", is_flag=True, help="Wait for the results.")
@click.option("--wait-timeout", type=float, default=None, help="Give up waiting after N s.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON only.")
@click.option("--correlation-id", default=None,
              help="Correlation id of these jobs (default: a new one per job).")
@click.option("--tenant", default=None, help="Tenant of these jobs (default: their tenant "
              "label, else the auth plugin's key id).")
@click.option("--baggage", "baggage_items", multiple=True, metavar="KEY=VALUE",
              help="Baggage that travels with the jobs to their workers (repeatable).")
@expiry_options
def submit(*, paths: tuple[Path, ...], code: str | None, interpreter: str | None,
            args: tuple[str, ...], timeout: float | None, consensus: str | None, wait: bool,
            wait_timeout: float | None, as_json: bool, correlation_id: str | None,
            tenant: str | None, baggage_items: tuple[str, ...], expires_in: float | None,
            deadline: datetime | None) -> None:
    """Submit job directories (holding job.json), job.json files, or --code."""
    if bool(paths) == bool(code):
        raise click.UsageError("give job PATHs or --code, not both and not neither")
    baggage = _baggage(baggage_items)
    with client() as sandrun:
        try:
            runs = [sandrun.submit(b.build(), correlation_id=correlation_id, tenant=tenant,
                                   baggage=baggage)
                    for b in _builders(sandrun, paths, code, interpreter, args,
                                       timeout=timeout, consensus=consensus,
                                       expires_in=expires_in, deadline=deadline)]
            if not wait:
                for run in runs:
                    click.echo(json.dumps({"id": run.id, "status": "queued",
                                           "correlation_id": run.correlation_id})
                               if as_json else run.id)
                return
            results = wait_all(runs, wait_timeout, as_json)
        except SandrunError as exc:
            fail(exc)
        except ValueError as exc:  # pydantic validation of builder fields
            fail(invalid(exc))
    for res in results:
        print_result(res, as_json)
    sys.exit(EXIT_OK if all(r.status == "completed" for r in results) else EXIT_JOB_FAILED)


def _baggage(items: tuple[str, ...]) -> dict[str, str]:
    """``--baggage KEY=VALUE`` options as a dict (the client validates keys and values)."""
    baggage: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--baggage {item!r} is not KEY=VALUE")
        baggage[key] = value
    return baggage


@click.command()
@click.argument("job_id")
def status(job_id: str) -> None:
    """Print a job's status (queued, running, retrying, or its final status), with the
    progress a running job reported: ``running 40% (step 4/10: 'training')``."""
    with client() as sandrun:
        run = sandrun.execution(job_id)
        state = run.status()
        progress = run.progress() if state == "running" else None
    click.echo(f"{state} {progress.describe()}" if progress else state)


@click.command()
@click.argument("job_id")
@click.option("--wait", "wait_for", type=float, default=None, help="Wait up to N s for it.")
@click.option("--json", "as_json", is_flag=True, help="Print the JobResult as JSON only.")
def result(job_id: str, wait_for: float | None, as_json: bool) -> None:
    """Print a finished job's result (exit 1 if it did not complete)."""
    with client() as sandrun:
        run = sandrun.execution(job_id)
        try:
            res = run.wait(wait_for) if wait_for is not None else run.result()
        except SandrunError as exc:
            fail(exc)
        if res is None:
            fail(SandrunError(f"job {job_id} has no result yet (status: {run.status()}); "
                              "use --wait N to wait for it"))
    print_result(res, as_json)
    sys.exit(EXIT_OK if res.status == "completed" else EXIT_JOB_FAILED)


@click.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True,
              help="Print lines as the job prints them, until it ends; exit 0 if it "
              "completed, 1 if not.")
@click.option("--wait-timeout", type=float, default=None,
              help="With -f: give up after N s (exit 4).")
def logs(job_id: str, follow: bool, wait_timeout: float | None) -> None:
    """Print a job's stdout (and its stderr on stderr): a finished job's, or with -f,
    a running one's as it prints it (exit status: 0 completed, 1 any other final
    status, 3 broker unreachable, 4 --wait-timeout passed)."""
    if not follow:
        with client() as sandrun:
            out, err = sandrun.execution(job_id).logs()
        click.echo(out, nl=False)
        click.echo(err, nl=False, err=True)
        return
    with client() as sandrun:
        run = sandrun.execution(job_id)
        try:
            for line in run.logs(follow=True, timeout=wait_timeout):
                text = f"[sandrun] {line.text}" if line.stream == "sandrun" else line.text
                click.echo(text, nl=False, err=line.stream != "stdout")  # flushes
            res = run.result()
        except SandrunError as exc:
            fail(exc)
    sys.exit(EXIT_OK if res is not None and res.status == "completed" else EXIT_JOB_FAILED)


@click.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job wherever it is (a queued, held, scheduled or retrying one never runs,
    a running one is terminated) and print where it was."""
    with client() as sandrun:
        try:
            where = sandrun.execution(job_id).cancel()
        except SandrunError as exc:
            fail(exc)
    if where == "finished":
        click.echo(f"{job_id}: finished already, nothing cancelled")
    else:
        click.echo(f"{job_id}: cancelled ({where})")


@click.command()
@click.argument("job_id")
@click.argument("path")
@click.option("--dest", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="File or directory to write to.")
def download(job_id: str, path: str, dest: Path) -> None:
    """Download one output file of a finished job."""
    with client() as sandrun:
        try:
            written = sandrun.execution(job_id).download(path, dest)
        except SandrunError as exc:
            fail(exc)
    click.echo(str(written))
