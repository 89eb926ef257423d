"""Checks a plugin against the spec before it registers anything.

Every problem of one plugin is collected and reported in a single
:class:`~worker.errors.InvalidPlugin` whose lines name the plugin, the hook and
the bad signature, so an author fixes them all in one pass.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ValidationError

from worker.errors import InvalidPlugin, PluginConfigError
from worker.plugin import permissions as perms
from worker.plugin.spec import (
    CHAIN_HOOKS,
    CUSTOM_HOOK_ARGS,
    HOOK_OPTIONS_ATTR,
    LIFECYCLE_HOOKS,
    NAME_PATTERN,
    HookOptions,
    Plugin,
    PluginDependency,
)


@dataclass(frozen=True, slots=True)
class CheckedPlugin:
    """A plugin that passed validation, with everything the manager needs from it."""

    plugin: Plugin
    name: str
    version: Version
    priority: int
    dependencies: tuple[PluginDependency, ...]
    hooks: dict[str, HookOptions]
    custom_hooks: tuple[str, ...]
    config_model: type[BaseModel] | None
    #: What the manifest declares; None: undeclared (every permission, see
    #: :mod:`worker.plugin.permissions`).
    permissions: frozenset[str] | None = None


def _overridden(plugin: Plugin, attr: str) -> bool:
    fn = getattr(plugin, attr)
    return getattr(fn, "__func__", fn) is not Plugin.__dict__.get(attr)


def _signature_problem(plugin: Plugin, attr: str, args: tuple[str, ...]) -> str | None:
    fn = getattr(plugin, attr)
    if not callable(fn):
        return f"{attr} is a {type(fn).__name__}, not a method"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args)
    except TypeError:
        want = ", ".join(("self", *args))
        have = ", ".join(("self", *(str(p.replace(annotation=p.empty))
                                    for p in sig.parameters.values())))
        return (f"hook {attr}({have}) does not match the spec {attr}({want}); "
                f"accept exactly the arguments ({', '.join(args)})")
    return None


def plugin_name(plugin: Plugin) -> str:
    """The plugin's name, from ``name`` or its manifest; raise if missing or mismatched."""
    name = plugin.name or (plugin.manifest.name if plugin.manifest else None) or ""
    label = type(plugin).__qualname__
    if not name:
        raise InvalidPlugin(f"plugin class {label} has no name; set the class attribute "
                            "name = 'my-plugin'")
    if plugin.manifest and plugin.manifest.name not in (None, name):
        raise InvalidPlugin(f"plugin {name!r}: its manifest is named {plugin.manifest.name!r}; "
                            "use one name")
    if not NAME_PATTERN.match(name):
        raise InvalidPlugin(f"plugin name {name!r} ({label}) is invalid: use lowercase letters, "
                            "digits, '-', '_' or '.', starting with a letter")
    return name


def _dependencies(plugin: Plugin, problems: list[str]) -> tuple[PluginDependency, ...]:
    declared = [PluginDependency(d) if isinstance(d, str) else d for d in plugin.dependencies]
    from_manifest = list(plugin.manifest.dependencies) if plugin.manifest else []
    if declared and from_manifest and declared != from_manifest:
        problems.append("dependencies differ between the class attribute and the manifest; "
                        "declare them once")
    deps = tuple(declared or from_manifest)
    for dep in deps:
        if not isinstance(dep, PluginDependency):
            problems.append(f"dependency {dep!r} is not a PluginDependency")
    return deps


def _custom_hooks(plugin: Plugin, problems: list[str]) -> tuple[str, ...]:
    names = tuple(plugin.custom_hooks)
    for hook_name in names:
        if hook_name in CHAIN_HOOKS or hook_name in LIFECYCLE_HOOKS:
            problems.append(f"custom hook {hook_name!r} shadows a spec hook; pick another name")
        elif not (hook_name.startswith("on_") and hook_name.isidentifier()):
            problems.append(f"custom hook {hook_name!r} must be an identifier starting with 'on_'")
    return names


def _hooks(plugin: Plugin, custom: Collection[str], problems: list[str]) -> dict[str, HookOptions]:
    hooks: dict[str, HookOptions] = {}
    for attr in dir(plugin):
        if not attr.startswith("on_"):
            continue
        if attr in CHAIN_HOOKS or attr in LIFECYCLE_HOOKS:
            if not _overridden(plugin, attr):
                continue
            args = CHAIN_HOOKS.get(attr) or LIFECYCLE_HOOKS[attr]
        elif attr in custom:
            args = CUSTOM_HOOK_ARGS
        else:
            problems.append(f"method {attr} is neither a spec hook ({', '.join(CHAIN_HOOKS)}, "
                            "on_init, on_destroy) nor a declared custom hook; rename it, or "
                            "declare it in custom_hooks of this plugin or of one it depends on")
            continue
        problem = _signature_problem(plugin, attr, args)
        if problem:
            problems.append(problem)
        elif attr not in LIFECYCLE_HOOKS:
            fn = getattr(plugin, attr)
            hooks[attr] = getattr(fn, HOOK_OPTIONS_ATTR, HookOptions())
    return hooks


def _timeout_problems(plugin: Plugin, hooks: Mapping[str, HookOptions]) -> list[str]:
    values = [("hook_timeout", plugin.hook_timeout),
              *((f"@hook(timeout=...) of {name}", o.timeout) for name, o in hooks.items())]
    return [f"{where} is {value!r}; use a number of seconds >= 0 (0: no limit)"
            for where, value in values if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0)]


def _manifest_problems(plugin: Plugin, hooks: Collection[str], must_declare: bool
                       ) -> list[str]:
    """How the manifest's ``apis`` and ``permissions`` disagree with the plugin."""
    manifest = plugin.manifest
    apis = None if manifest is None else manifest.apis
    declared = None if manifest is None else manifest.permissions
    problems = []
    if must_declare and (apis is None or declared is None):
        problems.append("a plugin of an installed package must declare what it does: set "
                        f"manifest = PluginManifest(apis={sorted(hooks)!r}, permissions=[...]) "
                        f"(permissions among {', '.join(sorted(perms.ALL))})")
    if apis is not None:
        listed = set(apis) - set(LIFECYCLE_HOOKS)
        missing, extra = sorted(set(hooks) - listed), sorted(listed - set(hooks))
        if missing or extra:
            diff = [f"implements {', '.join(missing)} not listed" if missing else "",
                    f"lists {', '.join(extra)} it does not implement" if extra else ""]
            problems.append(f"manifest apis do not match its methods: it "
                            f"{'; it '.join(d for d in diff if d)}; set apis={sorted(hooks)!r}")
    bad = perms.unknown(declared or ())
    if bad:
        problems.append(f"manifest permissions {', '.join(bad)} are unknown; use "
                        f"{', '.join(sorted(perms.ALL))}")
    return problems


def check_plugin(plugin: Plugin, known_custom_hooks: Collection[str] = (), *,
                 must_declare: bool = False) -> CheckedPlugin:
    """Validate ``plugin`` against the spec; raise one InvalidPlugin listing every problem.

    ``must_declare``: the manifest must state ``apis`` and ``permissions`` (plugins
    loaded from installed packages by entry-point name)."""
    if not isinstance(plugin, Plugin):
        raise InvalidPlugin(f"{plugin!r} is not a Plugin; subclass worker.Plugin")
    name = plugin_name(plugin)
    problems: list[str] = []
    version = Version("0")
    try:
        version = Version(plugin.version)
    except (InvalidVersion, TypeError):
        problems.append(f"version {plugin.version!r} is not a PEP 440 version such as '1.0.0'")
    if plugin.manifest and plugin.manifest.version not in (None, plugin.version):
        problems.append(f"manifest version {plugin.manifest.version!r} differs from "
                        f"version {plugin.version!r}")
    if not isinstance(plugin.priority, int) or isinstance(plugin.priority, bool):
        problems.append(f"priority {plugin.priority!r} must be an integer")
    deps = _dependencies(plugin, problems)
    custom = _custom_hooks(plugin, problems)
    hooks = _hooks(plugin, {*known_custom_hooks, *custom}, problems)
    problems.extend(_timeout_problems(plugin, hooks))
    problems.extend(_manifest_problems(plugin, hooks, must_declare))
    if problems:
        raise InvalidPlugin(f"plugin {name!r} ({type(plugin).__qualname__}) is invalid:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    model = plugin.manifest.configuration if plugin.manifest else None
    declared = plugin.manifest.permissions if plugin.manifest else None
    return CheckedPlugin(plugin, name, version, plugin.priority, deps, hooks, custom, model,
                         None if declared is None else frozenset(declared))


def check_config(name: str, model: type[BaseModel] | None, config: Any) -> Any:
    """Validate ``config`` against the plugin's configuration model; return the model instance."""
    if model is None:
        if config:
            keys = sorted(config) if isinstance(config, Mapping) else config
            raise PluginConfigError(f"plugin {name!r} takes no configuration (its manifest has "
                                    f"no configuration model), got {keys!r}; remove it")
        return None
    if isinstance(config, model):
        return config
    if config is not None and not isinstance(config, Mapping):
        raise PluginConfigError(f"plugin {name!r}: configuration must be a mapping, "
                                f"got {type(config).__name__}")
    try:
        return model.model_validate(dict(config or {}))
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise PluginConfigError(
            f"plugin {name!r}: invalid configuration:\n" + "\n".join(lines)
            + f"\n  (see 'sandrun plugins schema {name}' for the accepted fields)") from None
