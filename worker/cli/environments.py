"""``sandrun environments``: the environments this host's operator prepared
(``SANDRUN_ENVIRONMENTS_DIR``), the names a job's ``environment`` may give.

Run it on a worker host: it reads that host's directory and runs each
interpreter once to learn its Python version.
"""

from __future__ import annotations

import json

import click

from worker.cli.common import EXIT_USAGE, console


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def environments(as_json: bool) -> None:
    """List prepared environments: name, interpreter, Python version."""
    from rich.table import Table

    from worker.sandbox.environments import list_environments
    from worker.settings import Settings

    root = Settings().environments_dir
    if root is None:
        click.echo("no environments: SANDRUN_ENVIRONMENTS_DIR is not set", err=True)
        raise SystemExit(EXIT_USAGE)
    found = list_environments(str(root))
    if as_json:
        for env in found:
            click.echo(json.dumps({"name": env.name, "interpreter": env.interpreter,
                                   "python_version": env.python_version}))
        return
    table = Table("name", "interpreter", "python")
    for env in found:
        table.add_row(env.name, env.interpreter, env.python_version or "does not run")
    console().print(table if found else f"no environments under {root}")
