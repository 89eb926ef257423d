"""``sandrun plugins list|show|explain|schema``: installed entry points, ``SANDRUN_PLUGINS``
and what each plugin may do (``SANDRUN_PLUGIN_PERMISSIONS``).

The plugin host and rich are imported inside the commands (``sandrun --help``
does not pay for them); none of them imports Celery, unless a plugin does.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from worker.cli.common import configured_specs, console, fail
from worker.errors import ConfigurationError, SandrunError

if TYPE_CHECKING:
    from worker.plugin.manager import PluginManager
    from worker.plugin.validation import CheckedPlugin


@click.group()
def plugins() -> None:
    """Inspect installed and configured plugins."""


def _checked(ref: str) -> tuple[CheckedPlugin, Any, frozenset[str]]:
    """The plugin ``ref`` names, checked as a worker would load it, its effective
    config and the permissions it would be granted."""
    from worker.plugin.loader import PluginSpec, resolve_ref
    from worker.plugin.validation import check_config, check_plugin

    specs = {str(s.ref): s for s in configured_specs()}
    spec = specs.get(ref, PluginSpec(ref))
    checked = check_plugin(resolve_ref(ref), _all_custom_hooks(), must_declare=spec.from_package)
    config = check_config(checked.name, checked.config_model, spec.config)
    return checked, config, _manager().granted_to(checked, spec)


def _manager() -> PluginManager:
    """A manager with the operator's grants, to check plugins without loading them."""
    from worker.plugin.manager import PluginManager
    from worker.plugin.permissions import SETTING, parse_plugin_permissions

    return PluginManager(permissions=parse_plugin_permissions(os.environ.get(SETTING)))


def _perms(names: frozenset[str] | None) -> str:
    if names is None:
        return "undeclared (every permission)"
    return ", ".join(sorted(names)) or "none"


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
            manager = _manager()
            manager.load_all(configured_specs())
            print_plan(manager)
            manager.close()
    except SandrunError as exc:
        fail(exc)


@plugins.command("show")
@click.argument("name")
def plugins_show(name: str) -> None:
    """Show one plugin: metadata, dependencies, hooks, permissions and effective config."""
    try:
        checked, config, granted = _checked(name)
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
             ("declared permissions", _perms(checked.permissions)),
             ("granted permissions", _perms(granted)),
             ("config", config.model_dump_json() if config is not None else "-")]
    table = Table(show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)


@plugins.command("explain")
@click.argument("hook_name", metavar="HOOK")
def plugins_explain(hook_name: str) -> None:
    """Print the chain of HOOK for SANDRUN_PLUGINS: call order, priority, timeout and
    permissions of each handler (checked as a worker loads them, without on_init)."""
    from rich.table import Table

    from worker.plugin.permissions import RETURN_NEEDS
    from worker.plugin.spec import CHAIN_HOOKS
    from worker.settings import load_settings

    try:
        manager = _manager()
        checked = manager.validate(configured_specs())
        default_timeout = load_settings().hook_timeout
        specs = _specs_by_name()
    except SandrunError as exc:
        fail(exc)
        return
    known = {*CHAIN_HOOKS, *(h for c in checked for h in c.custom_hooks)}
    if hook_name not in known:
        fail(ConfigurationError(f"{hook_name!r} is not a hook: use one of "
                                f"{', '.join(sorted(known))}"))
    chain = sorted(((c, order) for order, c in enumerate(checked) if hook_name in c.hooks),
                   key=lambda pair: (-_priority(pair[0], hook_name), pair[1]))
    table = Table(title=f"{hook_name}: handlers in call order")
    for column in ("#", "plugin", "priority", "timeout", "may change", "granted"):
        table.add_column(column, overflow="fold")
    need = RETURN_NEEDS.get(hook_name)
    for index, (item, _) in enumerate(chain, 1):
        granted = manager.granted_to(item, specs.get(item.name))
        changes = "yes" if need is None or need in granted else f"no: {need}"
        table.add_row(str(index), item.name, str(_priority(item, hook_name)),
                      _timeout(item, hook_name, default_timeout), changes, _perms(granted))
    console().print(table)
    if not chain:
        console().print(f"no configured plugin implements {hook_name}")


def _priority(item: CheckedPlugin, hook_name: str) -> int:
    option = item.hooks[hook_name].priority
    return item.priority if option is None else option


def _timeout(item: CheckedPlugin, hook_name: str, default: float) -> str:
    """The hook's timeout as dispatch applies it (see dispatch.implementations)."""
    option, plugin_default = item.hooks[hook_name].timeout, item.plugin.hook_timeout
    seconds = option if option is not None else (
        plugin_default if plugin_default is not None else default)
    return f"{seconds:g}s" if seconds else "none (inline)"


def _specs_by_name() -> dict[str, Any]:
    """Configured specs by the name of the plugin each loads."""
    from worker.plugin.loader import resolve_ref

    return {resolve_ref(spec.ref).name: spec for spec in configured_specs()}


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
