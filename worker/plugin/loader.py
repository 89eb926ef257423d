"""Turning a plugin reference into a plugin instance.

A reference is one of:

* a :class:`~worker.plugin.spec.Plugin` instance (used as is);
* a ``Plugin`` subclass (instantiated without arguments);
* ``"package.module:attr"``: ``attr`` may be a class, an instance or a factory;
* a bare name: an entry point in the ``sandrun.plugins`` group, which third-party
  packages declare in their ``pyproject.toml``::

      [project.entry-points."sandrun.plugins"]
      quota = "sandrun_quota:QuotaPlugin"

``parse_plugin_specs`` reads the ``SANDRUN_PLUGINS`` setting: a JSON list whose
items are references or ``{"name": ..., "config": {...}, "permissions": [...]}``
objects (``permissions``: grant the plugin only these of what it declares).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from worker.errors import ConfigurationError, PluginNotFound
from worker.logs import apply_deferred_logging
from worker.plugin import permissions as perms
from worker.plugin.spec import Plugin

ENTRY_POINT_GROUP = "sandrun.plugins"

PluginRef = Plugin | type[Plugin] | str


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin reference with the configuration to load it with and, optionally, the
    subset of its declared permissions it is granted (None: all it declares)."""

    ref: PluginRef
    config: Any = field(default=None)
    permissions: frozenset[str] | None = None

    @property
    def from_package(self) -> bool:
        """Whether the reference is an entry-point name (an installed package's plugin)."""
        return isinstance(self.ref, str) and ":" not in self.ref


def available_entry_points() -> dict[str, EntryPoint]:
    """Installed plugins by entry-point name (group ``sandrun.plugins``)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _instantiate(obj: Any, where: str) -> Plugin:
    if isinstance(obj, Plugin):
        return obj
    if isinstance(obj, type) and issubclass(obj, Plugin):
        return obj()
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:
            raise PluginNotFound(f"{where} is a factory, but calling it without arguments "
                                 f"failed ({type(exc).__name__}: {exc}); point the reference "
                                 "at a plugin class, an instance or a no-argument factory")\
                from exc
        if isinstance(made, Plugin):
            return made
        raise PluginNotFound(f"{where} is a factory, but it returned {made!r}, not a Plugin")
    raise PluginNotFound(f"{where} is {obj!r}, not a Plugin subclass, instance or factory")


def _import_attr(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginNotFound(f"cannot import module {module_name!r} for plugin {ref!r} ({exc}); "
                             "check the path and that its package is installed") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginNotFound(f"module {module_name!r} has no attribute {attr!r} "
                                 f"(plugin reference {ref!r})") from None
    return obj


def resolve_ref(ref: PluginRef) -> Plugin:
    """Return the plugin instance a reference names, or raise PluginNotFound.

    Logging a command left pending is configured first: plugin code may log through
    structlog directly, which would otherwise print with structlog's defaults."""
    apply_deferred_logging()
    if not isinstance(ref, str):
        return _instantiate(ref, repr(ref))
    if ":" in ref:
        return _instantiate(_import_attr(ref), repr(ref))
    eps = available_entry_points()
    if ref not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise PluginNotFound(f"no plugin named {ref!r} in entry-point group {ENTRY_POINT_GROUP!r} "
                             f"(available: {known}); install its package, or use "
                             "'package.module:attr'")
    try:
        obj = eps[ref].load()
    except Exception as exc:
        raise PluginNotFound(f"entry point {ref!r} ({eps[ref].value}) failed to import: "
                             f"{exc}") from exc
    return _instantiate(obj, f"entry point {ref!r}")


def _object_spec(item: dict[str, Any], where: str) -> PluginSpec:
    extra = set(item) - {"name", "config", "permissions"}
    config, granted = item.get("config"), item.get("permissions")
    if extra or not (config is None or isinstance(config, dict)):
        raise ConfigurationError(f"{where}: objects take 'name', an optional 'config' object "
                                 f"and an optional 'permissions' list, got {item!r}")
    if granted is not None:
        if not isinstance(granted, list) or not all(isinstance(p, str) for p in granted):
            raise ConfigurationError(f"{where}: 'permissions' must be a list of names such as "
                                     '["storage", "job:transform"]')
        bad = perms.unknown(granted)
        if bad:
            raise ConfigurationError(f"{where}: unknown permission(s) {', '.join(bad)}; use "
                                     f"{', '.join(sorted(perms.ALL))}")
        granted = frozenset(granted)
    return PluginSpec(item["name"], config, granted)


def parse_plugin_specs(raw: str | None, *, setting: str = "SANDRUN_PLUGINS") -> list[PluginSpec]:
    """Parse a JSON plugin list; raise ConfigurationError saying which item is wrong."""
    if raw is None or not raw.strip():
        return []
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{setting} is not valid JSON ({exc}); write a list such as "
                                 '\'["retry", {"name": "metrics", "config": {"port": 9100}}]\'')\
            from None
    if not isinstance(items, list):
        raise ConfigurationError(f"{setting} must be a JSON list, got {type(items).__name__}")
    specs = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item:
            specs.append(PluginSpec(item))
        elif isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
            specs.append(_object_spec(item, f"{setting}[{index}]"))
        else:
            raise ConfigurationError(f"{setting}[{index}] is {item!r}; use a plugin name, "
                                     "'module:attr', or {\"name\": ..., \"config\": {...}}")
    return specs
