"""``sandrun plugins list|show|schema``: installed entry points and ``SANDRUN_PLUGINS``.

The plugin host and rich are imported inside the commands (``sandrun --help``
does not pay for them); none of them imports Celery, unless a plugin does.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from worker.cli.common import configured_specs, console, fail
from worker.errors import SandrunError

if TYPE_CHECKING:
    from worker.plugin.manager import PluginManager
    from worker.plugin.validation import CheckedPlugin


@click.group()
def plugins() -> None:
    """Inspect installed and configured plugins."""


def _checked(ref: str) -> tuple[CheckedPlugin, Any]:
    from worker.plugin.loader import resolve_ref
    from worker.plugin.validation import check_config, check_plugin

    specs = {str(s.ref): s for s in configured_specs()}
    checked = check_plugin(resolve_ref(ref), _all_custom_hooks())
    config = check_config(checked.name, checked.config_model,
                          specs[ref].config if ref in specs else None)
    return checked, config


def _all_custom_hooks() -> set[str]:
    from worker.plugin.loader import resolve_ref

    hooks: set[str] = set()
    for spec in configured_specs():
        hooks.update(getattr(resolve_ref(spec.ref), "custom_hooks", ()))
    return hooks


def print_plan(manager: PluginManager) -> None:
    """Print loaded plugins and, per hook, the handlers in call order."""
    from rich.table import Table

    table = Table(title="Loaded plugins")
    for column in ("plugin", "version", "priority", "hooks", "config"):
        table.add_column(column, overflow="fold")
    for item in manager.loaded():
        config = item.config.model_dump_json() if item.config is not None else "-"
        table.add_row(item.checked.name, str(item.checked.version), str(item.checked.priority),
                      ", ".join(item.checked.hooks) or "-", config)
    console().print(table)
    plan = Table(title="Hook plan (call order)")
    plan.add_column("hook")
    plan.add_column("handlers, first to last")
    for hook_name, entries in manager.hook_plan().items():
        plan.add_row(hook_name, " -> ".join(
            f"{e.plugin}({e.priority}{', once' if e.once else ''}{', async' if e.is_async else ''})"
            for e in entries))
    console().print(plan)


@plugins.command("list")
@click.option("--plan", is_flag=True, help="Load SANDRUN_PLUGINS and print the hook plan.")
def plugins_list(plan: bool) -> None:
    """List installed plugins and whether SANDRUN_PLUGINS enables them."""
    from rich.table import Table

    from worker.plugin.loader import available_entry_points, resolve_ref
    from worker.plugin.manager import PluginManager

    try:
        configured = {str(s.ref) for s in configured_specs()}
        table = Table(title="Installed plugins (entry-point group sandrun.plugins)")
        for column in ("name", "version", "enabled", "provided by", "description"):
            table.add_column(column)
        for name, ep in sorted(available_entry_points().items()):
            plugin = resolve_ref(name)
            description = plugin.manifest.description if plugin.manifest else ""
            table.add_row(name, plugin.version, "yes" if name in configured else "no",
                          ep.value, description)
        console().print(table)
        if plan:
            manager = PluginManager()
            manager.load_all(configured_specs())
            print_plan(manager)
            manager.close()
    except SandrunError as exc:
        fail(exc)


@plugins.command("show")
@click.argument("name")
def plugins_show(name: str) -> None:
    """Show one plugin: metadata, dependencies, hooks and effective config."""
    try:
        checked, config = _checked(name)
    except SandrunError as exc:
        fail(exc)
        return
    from rich.table import Table

    manifest = checked.plugin.manifest
    rows = [("name", checked.name), ("version", str(checked.version)),
            ("class", f"{type(checked.plugin).__module__}:{type(checked.plugin).__qualname__}"),
            ("priority", str(checked.priority))]
    if manifest:
        rows += [("description", manifest.description), ("author", manifest.author),
                 ("license", manifest.license), ("keywords", ", ".join(manifest.keywords))]
    rows += [("dependencies", ", ".join(
                f"{d.name}{d.version or ''}{' (optional)' if d.optional else ''}"
                for d in checked.dependencies) or "-"),
             ("hooks", ", ".join(
                 f"{h}(priority={checked.priority if o.priority is None else o.priority}"
                 f"{', once' if o.once else ''})" for h, o in checked.hooks.items()) or "-"),
             ("custom hooks", ", ".join(checked.custom_hooks) or "-"),
             ("config", config.model_dump_json() if config is not None else "-")]
    table = Table(show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)


@plugins.command("schema")
@click.argument("name")
def plugins_schema(name: str) -> None:
    """Print the JSON schema of a plugin's configuration."""
    from worker.plugin.loader import resolve_ref
    from worker.plugin.validation import check_plugin

    try:
        checked = check_plugin(resolve_ref(name), _all_custom_hooks())
    except SandrunError as exc:
        fail(exc)
        return
    model = checked.config_model
    schema = (model.model_json_schema() if model is not None else
              {"title": f"{checked.name} takes no configuration", "type": "object",
               "properties": {}, "additionalProperties": False})
    click.echo(json.dumps(schema, indent=2))
