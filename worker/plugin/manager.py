"""PluginManager: loads plugins, keeps their hooks in order, and dispatches them.

Where it runs: the producer client owns one; each worker pool process owns one.
``load``/``load_all`` validate (spec, config, dependencies) before calling
``on_init``, so a broken plugin set fails at start-up with one readable error.
``execute_hook`` is the single dispatch entry point for every chain hook.
A call past its timeout is counted like a raising one, with ``kind="timeout"``; a
change or veto its plugin may not make is refused and counted with
``kind="permission"`` (:mod:`worker.plugin.outcomes`). Each plugin is granted what
its manifest declares, narrowed by ``permissions`` (``SANDRUN_PLUGIN_PERMISSIONS``)
and by its spec's ``permissions`` (:mod:`worker.plugin.permissions`).
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from worker.collector import InMemoryMetrics, MetricsCollector, SwitchedMetrics
from worker.errors import (
    ConfigurationError,
    HookCallError,
    PluginAlreadyLoaded,
    PluginLoadError,
    PluginNotLoaded,
    UnloadRefused,
)
from worker.logs import get_logger
from worker.plugin import dispatch, permissions
from worker.plugin.context import PluginContext
from worker.plugin.deps import resolve
from worker.plugin.dispatch import HookRegistry, acall_chain, call_chain
from worker.plugin.guards import RefusedStorage
from worker.plugin.hooks import HookCalls
from worker.plugin.impl import HookImpl, HookTimer
from worker.plugin.loader import PluginRef, PluginSpec, resolve_ref
from worker.plugin.outcomes import HookOutcomes
from worker.plugin.spec import CHAIN_HOOKS, LIFECYCLE_HOOKS, Plugin
from worker.plugin.validation import CheckedPlugin, check_config, check_plugin
from worker.stores.deadletter import DeadLetterStore
from worker.stores.storage import MemoryStorageBackend, StorageBackend
from worker.tracing import NO_SPAN, Attributes, Tracer, chain_attributes

EVENTS = ("plugin_loaded", "plugin_unloaded", "hook_error")
log = get_logger("sandrun.plugins")


@dataclass(frozen=True, slots=True)
class PluginEvent:
    """What an event listener receives."""

    event: str
    plugin: str
    hook: str | None = None
    error: BaseException | None = None
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A plugin in the manager: its checked facts, validated config, context and the
    permissions it was granted."""

    checked: CheckedPlugin
    config: Any
    context: PluginContext
    granted: frozenset[str] = permissions.ALL


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One handler in a hook's call order."""

    plugin: str
    priority: int
    once: bool
    is_async: bool
    timeout: float = 0.0
    granted: frozenset[str] = permissions.ALL


def _call_lifecycle(plugin: str, fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        dispatch.run_sync(result, f"hook {fn.__name__} of plugin {plugin!r}")


class PluginManager(HookOutcomes, HookCalls):
    """Loads, orders and calls plugins. Thread-safe for dispatch; load/unload take a lock.

    ``hook_timeout``: seconds before a hook call is abandoned, for plugins that set
    none (0, the default here: no limit; runtime and client pass SANDRUN_HOOK_TIMEOUT).
    ``permissions``: per plugin name, the subset of its declared permissions it is
    granted (``parse_plugin_permissions(SANDRUN_PLUGIN_PERMISSIONS)``).
    ``hook_errors`` counts every fault per (plugin, hook), ``hook_timeouts`` timeouts."""

    def __init__(self, *, storage: StorageBackend | None = None,
                 metrics: MetricsCollector | None = None,
                 dead_letters: DeadLetterStore | None = None,
                 hook_timeout: float = 0.0,
                 permissions: Mapping[str, frozenset[str]] | None = None) -> None:
        if not hook_timeout >= 0:
            raise ConfigurationError(f"hook_timeout is {hook_timeout!r}; use seconds >= 0 "
                                     "(0: no limit)")
        self.storage = storage or MemoryStorageBackend()
        #: What plugins get as ``context.metrics``: it forwards to the installed collector,
        #: so metrics of plugins loaded before the metrics plugin reach its exporter too.
        self._switched = SwitchedMetrics(metrics or InMemoryMetrics())
        self.metrics = self._switched
        self.dead_letters = dead_letters
        self.tracer: Tracer | None = None
        self.hook_timeout = hook_timeout
        self.hook_errors: Counter[tuple[str, str]] = Counter()
        self.hook_timeouts: Counter[tuple[str, str]] = Counter()
        self._registry = HookRegistry()
        self._plugins: dict[str, LoadedPlugin] = {}
        self._declared: set[str] = set()
        self._listeners: dict[str, list[Callable[[PluginEvent], None]]] = {e: [] for e in EVENTS}
        self._order = itertools.count()
        self._lock = threading.RLock()
        self._grants = dict(permissions or {})

    # -- loading -----------------------------------------------------------------
    def declare_hooks(self, *names: str) -> None:
        """Declare custom hook names the host calls, so plugins may implement them."""
        self._declared.update(names)

    def _known_custom(self) -> set[str]:
        hooks = set(self._declared)
        for loaded in self._plugins.values():
            hooks.update(loaded.checked.custom_hooks)
        return hooks

    def load(self, plugin: PluginRef, config: Any = None) -> Plugin:
        """Validate, resolve dependencies, ``on_init`` and register one plugin."""
        return self.load_all([PluginSpec(plugin, config)])[0]

    def load_all(self, specs: Sequence[PluginSpec | PluginRef]) -> list[Plugin]:
        """Load several plugins in dependency order; all or none of them end up loaded."""
        with self._lock:
            ordered, configs, grants = self._prepare(specs)
            done: list[str] = []
            try:
                for item in ordered:
                    self._start(item, configs[item.name], grants[item.name])
                    done.append(item.name)
            except BaseException:
                for name in reversed(done):
                    self.unload(name)
                raise
            return [self._plugins[c.name].checked.plugin for c in ordered]

    def validate(self, specs: Sequence[PluginSpec | PluginRef]) -> list[CheckedPlugin]:
        """Everything ``load_all`` checks, without calling ``on_init`` or registering hooks.

        A worker's main process uses it at start so a broken plugin set stops the
        worker before any pool process starts; a ``permissions`` entry naming no
        plugin of the set is logged there (a typo would leave a plugin its declared
        permissions)."""
        with self._lock:
            checked = self._prepare(specs)[0]
        unmatched = sorted(set(self._grants) - {c.name for c in checked} - set(self._plugins))
        if unmatched:
            log.warning("plugin_permissions_unmatched", names=unmatched,
                        plugins=sorted(c.name for c in checked),
                        fix=f"check the plugin names in {permissions.SETTING}")
        return checked

    def _prepare(self, specs: Sequence[PluginSpec | PluginRef]
                 ) -> tuple[list[CheckedPlugin], dict[str, Any], dict[str, frozenset[str]]]:
        items = [s if isinstance(s, PluginSpec) else PluginSpec(s) for s in specs]
        instances = [resolve_ref(s.ref) for s in items]
        known = self._known_custom() | {h for p in instances
                                        for h in getattr(p, "custom_hooks", ())}
        checked = [check_plugin(p, known, must_declare=s.from_package)
                   for p, s in zip(instances, items, strict=True)]
        configs = {c.name: check_config(c.name, c.config_model, s.config)
                   for c, s in zip(checked, items, strict=True)}
        grants = {c.name: self.granted_to(c, s) for c, s in zip(checked, items, strict=True)}
        for item in checked:
            if item.name in self._plugins:
                raise PluginAlreadyLoaded(f"plugin {item.name!r} is already loaded; unload it "
                                          "first to load it again with other settings")
        loaded_versions = {n: p.checked.version for n, p in self._plugins.items()}
        return resolve(checked, loaded_versions), configs, grants

    def granted_to(self, item: CheckedPlugin, spec: PluginSpec | None = None) -> frozenset[str]:
        """What ``item`` is granted: what it declares, narrowed by the manager's
        ``permissions`` and by ``spec.permissions``; ConfigurationError when either grants
        more than it declares."""
        return permissions.effective(item.name, item.permissions, {
            permissions.SETTING: self._grants.get(item.name),
            f"the SANDRUN_PLUGINS entry of {item.name!r}": spec.permissions if spec else None})

    def _start(self, item: CheckedPlugin, config: Any, granted: frozenset[str]) -> None:
        storage = self.storage.for_plugin(item.name)
        if "storage" not in granted:
            storage = RefusedStorage(item.name, self.refuse)
        context = PluginContext(
            name=item.name, config=config, metrics=self.metrics,
            logger=get_logger("sandrun.plugin", plugin=item.name),
            storage=storage, dead_letters=self.dead_letters,
            install_metrics=self.install_metrics, time_hooks=self.time_hooks,
            install_tracer=self.install_tracer)
        try:
            _call_lifecycle(item.name, item.plugin.on_init, context)
        except Exception as exc:
            raise PluginLoadError(f"plugin {item.name!r} failed in on_init: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self._registry.add(dispatch.implementations(item, next(self._order), self.hook_timeout,
                                                    granted, self.refuse))
        self._plugins[item.name] = LoadedPlugin(item, config, context, granted)
        log.debug("plugin_loaded", plugin=item.name, version=str(item.version),
                  permissions=sorted(granted))
        if item.permissions is None:
            log.info("plugin_permissions_undeclared", plugin=item.name,
                     granted=sorted(granted), fix="declare manifest permissions=[...]")
        self._emit(PluginEvent("plugin_loaded", item.name))

    def install_metrics(self, collector: MetricsCollector) -> None:
        """Make ``collector`` the one the manager, its dead-letter store and every plugin,
        loaded before or after, record into (the metrics plugin installs a Prometheus one)."""
        self._switched.switch(collector)
        if self.dead_letters is not None:
            self.dead_letters.metrics = collector

    def install_tracer(self, tracer: Tracer | None) -> None:
        """Open the host's spans (submission, hook chains, sandboxed run) with ``tracer``
        from now on (None: stop tracing)."""
        self.tracer = tracer

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[Any]:
        """A span of the installed tracer around a step of the host; a no-op without one."""
        return NO_SPAN if self.tracer is None else self.tracer.span(name, attributes)

    def time_hooks(self, timer: HookTimer | None) -> None:
        """Report each hook handler's duration to ``timer`` (None: stop timing)."""
        self._registry.set_timer(timer)

    def unload(self, name: str) -> None:
        """Call ``on_destroy`` and unregister; refused while a loaded plugin requires it."""
        with self._lock:
            if name not in self._plugins:
                names = ", ".join(self._plugins) or "none"
                raise PluginNotLoaded(f"plugin {name!r} is not loaded (loaded: {names})")
            dependents = [p.checked.name for p in self._plugins.values()
                          if any(d.name == name and not d.optional for d in p.checked.dependencies)]
            if dependents:
                raise UnloadRefused(f"cannot unload {name!r}: {', '.join(dependents)} depend(s) "
                                    "on it; unload those first")
            loaded = self._plugins.pop(name)
            for threads in {i.threads for i in self._registry.remove(
                    lambda impl: impl.plugin == name) if i.threads is not None}:
                threads.close()  # its idle timed-hook threads exit
            try:
                _call_lifecycle(name, loaded.checked.plugin.on_destroy)
            except Exception as exc:
                log.error("plugin_destroy_failed", plugin=name, error=repr(exc))
            self._emit(PluginEvent("plugin_unloaded", name))

    def close(self) -> None:
        """Unload every plugin, dependents first (used at process shutdown)."""
        with self._lock:
            for name in reversed(list(self._plugins)):
                self.unload(name)

    # -- dispatch ------------------------------------------------------------------
    def execute_hook(self, name: str, data: Any, context: Any = None) -> Any:
        """Run hook ``name`` over ``data`` and return the (possibly replaced) data."""
        steps = self._registry.steps.get(name)
        if steps is None:
            self._check_hook_name(name)
            return data
        if self.tracer is None:
            return call_chain(steps, data, context, self)
        with self.tracer.span(f"sandrun.{name}", chain_attributes(name, data, context)):
            return call_chain(steps, data, context, self)

    async def aexecute_hook(self, name: str, data: Any, context: Any = None) -> Any:
        """``execute_hook`` for asyncio callers: async handlers are awaited in the running loop."""
        steps = self._registry.async_steps.get(name)
        if steps is None:
            self._check_hook_name(name)
            return data
        if self.tracer is None:
            return await acall_chain(steps, data, context, self)
        with self.tracer.span(f"sandrun.{name}", chain_attributes(name, data, context)):
            return await acall_chain(steps, data, context, self)

    def _check_hook_name(self, name: str) -> None:
        if name in LIFECYCLE_HOOKS:
            raise HookCallError(f"{name} is called by the manager itself on load/unload; "
                                "it cannot be dispatched with execute_hook")
        if name not in CHAIN_HOOKS and name not in self._known_custom():
            raise HookCallError(f"unknown hook {name!r}: not a spec hook "
                                f"({', '.join(CHAIN_HOOKS)}) and not declared by the host "
                                "(declare_hooks) or by a loaded plugin (custom_hooks)")

    def _emit_error(self, impl: HookImpl, exc: Exception, job_id: Any) -> None:
        self._emit(PluginEvent("hook_error", impl.plugin, impl.hook, exc,
                               None if job_id is None else str(job_id)))

    # -- events --------------------------------------------------------------------
    def on(self, event: str, callback: Callable[[PluginEvent], None]) -> Callable[[], None]:
        """Call ``callback`` on ``event``; returns a function that unsubscribes it."""
        if event not in self._listeners:
            raise ConfigurationError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        self._listeners[event].append(callback)
        return lambda: self._listeners[event].remove(callback)

    def _emit(self, event: PluginEvent) -> None:
        for callback in list(self._listeners[event.event]):
            try:
                callback(event)
            except Exception as exc:
                log.error("event_listener_failed", plugin_event=event.event, error=repr(exc))

    # -- introspection -----------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def get(self, name: str) -> Plugin:
        """The loaded plugin instance named ``name``."""
        try:
            return self._plugins[name].checked.plugin
        except KeyError:
            raise PluginNotLoaded(f"plugin {name!r} is not loaded") from None

    def loaded(self) -> list[LoadedPlugin]:
        """Loaded plugins in load order."""
        return list(self._plugins.values())

    def hook_plan(self) -> dict[str, list[PlanEntry]]:
        """Per hook, the handlers in the order they will be called."""
        return {name: [PlanEntry(i.plugin, i.priority, i.once, i.is_async, i.timeout,
                                 i.granted) for i in chain]
                for name, chain in sorted(self._registry.chains.items())}
