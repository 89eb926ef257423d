"""The one place hooks are called: a registry of chains and the loop that runs them.

A chain is the tuple of implementations of one hook, sorted by priority (higher
first) and, for equal priority, by load order. Whenever the registry changes (a
plugin loads or unloads, a ``once`` handler has run, hook timing is switched on or
off) it rebuilds that hook's *steps*: per implementation, one callable with its
timeout, its timer and its ``once`` already wrapped in. Dispatch reads one tuple and
decides nothing per call, so a handler without a timeout or timer is called as it
is, and the untimed path pays for no timer check. Tuples are swapped in whole, so a
running chain is never mutated under its feet and dispatch takes no lock.

The loop has one shape: each step gets ``(data, context)``; a coroutine it returns is
run to its end; a non-None result that is another object than ``data`` goes to the
manager's ``hook_changed``, which checks the plugin's permission, records which fields
changed (provenance) and says what ``data`` becomes; an exception other than the
propagated kinds is handed to ``hook_failed`` and the chain goes on; a propagated one
of a plugin that lacks some permission goes to ``hook_raised`` first (a refused veto
is ignored). Permission checks therefore cost nothing on a call that returns None or
its input, and nothing at all for a plugin holding every permission it could use.
It is written twice, line for line, because the async flavour must ``await`` inside
the ``try``: sharing one body would cost a coroutine per handler, more than the whole
loop costs now.

Timeouts: a handler with ``timeout`` > 0 that runs longer is abandoned with a
:class:`~worker.errors.HookTimeout`, handed to ``on_error`` like any fault, and the
chain goes on with ``data`` unchanged. Python cannot stop a running function, so
a timed sync handler runs on one of its plugin's threads (:mod:`worker.plugin.hookthreads`)
while the caller waits at most ``timeout``; an abandoned thread keeps running the
handler until it returns. Async handlers are cancelled instead (``asyncio.timeout``);
one that blocks its event loop without awaiting cannot be. Handlers without a
timeout run inline, at no extra cost.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any

from worker.errors import HookCallError, HookControl, HookTimeout
from worker.plugin import netguard
from worker.plugin.hookthreads import HookThreads
from worker.plugin.impl import Call, Chain, HookImpl, HookTimer, Outcomes, Steps
from worker.plugin.permissions import ALL
from worker.plugin.redact import ahiding, hiding
from worker.plugin.validation import CheckedPlugin


def implementations(item: CheckedPlugin, order: int, default_timeout: float,
                    granted: frozenset[str] = ALL,
                    refuse: netguard.Refuse | None = None) -> list[HookImpl]:
    """One plugin's handlers, ready to register. A handler's timeout is its
    ``@hook(timeout=...)``, else the plugin's ``hook_timeout``, else ``default_timeout``;
    the timed ones share one HookThreads for the plugin. ``granted``: the plugin's
    permissions (its handlers are ``restricted`` when it lacks one); without
    ``network`` its handlers run marked for :mod:`worker.plugin.netguard`, which
    reports refusals to ``refuse``."""
    restricted = granted != ALL
    no_network = "network" not in granted and refuse is not None
    if no_network:
        netguard.install()
    plugin_default = item.plugin.hook_timeout
    default = default_timeout if plugin_default is None else plugin_default
    threads = None
    impls = []
    for hook_name, options in item.hooks.items():
        fn = getattr(item.plugin, hook_name)
        is_async = inspect.iscoroutinefunction(fn)
        if no_network:
            assert refuse is not None
            fn = netguard.guarded(fn, item.name, hook_name, is_async, refuse)
        priority = item.priority if options.priority is None else options.priority
        timeout = float(default if options.timeout is None else options.timeout)
        if timeout and threads is None:
            threads = HookThreads(item.name)
        impls.append(HookImpl(item.name, hook_name, fn, priority, options.once,
                              is_async, order, timeout,
                              threads if timeout else None, granted, restricted))
    return impls


#: Exceptions a hook raises on purpose; they stop the chain and reach the caller.
PROPAGATE: tuple[type[BaseException], ...] = (HookControl, HookCallError)


class HookRegistry:
    """Chains by hook name and the steps each dispatch flavour runs for them.

    ``steps`` serve :func:`call_chain`, ``async_steps`` :func:`acall_chain`; both are
    rebuilt under a lock whenever a chain or the timer changes; reads take none."""

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self.steps: dict[str, Steps] = {}
        self.async_steps: dict[str, Steps] = {}
        self.timer: HookTimer | None = None
        self._lock = threading.Lock()

    def add(self, impls: list[HookImpl]) -> None:
        """Register implementations, keeping every chain in call order."""
        with self._lock:
            for impl in impls:
                chain = (*self.chains.get(impl.hook, ()), impl)
                self.chains[impl.hook] = tuple(sorted(chain, key=lambda i: (-i.priority, i.order)))
            self._rebuild({impl.hook for impl in impls})

    def remove(self, predicate: Callable[[HookImpl], bool]) -> list[HookImpl]:
        """Unregister every implementation for which ``predicate`` is true; return them."""
        removed: list[HookImpl] = []
        with self._lock:
            for name, chain in list(self.chains.items()):
                kept = tuple(i for i in chain if not predicate(i))
                removed.extend(i for i in chain if predicate(i))
                if kept:
                    self.chains[name] = kept
                else:
                    del self.chains[name]
            self._rebuild({impl.hook for impl in removed})
        return removed

    def discard(self, impl: HookImpl) -> None:
        """Unregister one implementation (a ``once`` hook that has run)."""
        self.remove(lambda i: i is impl)

    def set_timer(self, timer: HookTimer | None) -> None:
        """Report every handler's duration to ``timer`` from now on (None: stop timing)."""
        with self._lock:
            self.timer = timer
            self._rebuild(set(self.chains) | set(self.steps))

    def _rebuild(self, names: set[str]) -> None:
        for name in names:
            chain = self.chains.get(name)
            if chain is None:
                self.steps.pop(name, None)
                self.async_steps.pop(name, None)
                continue
            self.steps[name] = tuple((i, _step(i, self.timer, self.discard, False))
                                     for i in chain)
            self.async_steps[name] = tuple((i, _step(i, self.timer, self.discard, True))
                                           for i in chain)


_local = threading.local()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def run_sync(awaitable: Awaitable[Any], what: str) -> Any:
    """Run an async hook to completion from synchronous code (one event loop per thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise HookCallError(
            f"{what} is async and was called synchronously inside a running event loop; "
            "from async code use 'await manager.aexecute_hook(...)', and load plugins "
            "before the loop starts")
    runner = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = asyncio.Runner()
    return runner.run(_await(awaitable))


def _describe(impl: HookImpl) -> str:
    return f"hook {impl.hook} of plugin {impl.plugin!r}"


async def _within(awaitable: Awaitable[Any], impl: HookImpl) -> Any:
    """Await an async handler's result, cancelled after ``impl.timeout`` (HookTimeout)."""
    scope = asyncio.timeout(impl.timeout)
    try:
        async with scope:
            return await awaitable
    except TimeoutError:
        if scope.expired():
            raise HookTimeout(impl.plugin, impl.hook, impl.timeout) from None
        raise


def _call_timed(impl: HookImpl, data: Any, context: Any) -> Any:
    """Call a handler that has a timeout, from synchronous code."""
    if impl.is_async:
        return run_sync(_within(impl.function(data, context), impl), _describe(impl))
    if impl.threads is None:
        raise HookCallError(f"{_describe(impl)} has a timeout but no HookThreads to run on")
    return impl.threads.call(impl.hook, impl.timeout, lambda: _call_inline(impl, data, context))


def _call_inline(impl: HookImpl, data: Any, context: Any) -> Any:
    result = impl.function(data, context)
    return run_sync(result, _describe(impl)) if inspect.isawaitable(result) else result


async def _acall_timed(impl: HookImpl, data: Any, context: Any) -> Any:
    """Call a handler that has a timeout, from a running event loop."""
    if impl.is_async:
        return await _within(impl.function(data, context), impl)
    return await asyncio.to_thread(_call_timed, impl, data, context)


def _timing(impl: HookImpl, call: Call, timer: HookTimer) -> Call:
    """``call`` reporting its duration (a coroutine it returns run to its end) to ``timer``."""

    def timed(data: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            result = call(data, context)
            return run_sync(result, _describe(impl)) if type(result) is CoroutineType else result
        finally:
            timer(impl, time.perf_counter() - started)

    return timed


def _atiming(impl: HookImpl, call: Call, timer: HookTimer) -> Call:
    """``_timing`` for the event loop: the duration includes awaiting the result."""

    async def timed(data: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            result = call(data, context)
            return await result if inspect.isawaitable(result) else result
        finally:
            timer(impl, time.perf_counter() - started)

    return timed


def _once(impl: HookImpl, call: Call, discard: Callable[[HookImpl], None]) -> Call:
    """``call`` that unregisters ``impl`` before it runs, so it runs a single time."""

    def once(data: Any, context: Any) -> Any:
        discard(impl)
        return call(data, context)

    return once


def _step(impl: HookImpl, timer: HookTimer | None, discard: Callable[[HookImpl], None],
          in_loop: bool) -> Call:
    """What dispatch calls for ``impl``: the handler itself, or it wrapped in its timeout
    (``in_loop``: for :func:`acall_chain`), the hiding of secrets (a plugin without
    ``secrets``), the timer and ``once``, in that order."""
    call: Call = impl.function
    if impl.timeout:
        call = functools.partial(_acall_timed if in_loop else _call_timed, impl)
    if "secrets" not in impl.granted:
        call = ahiding(call) if in_loop else hiding(
            call, functools.partial(run_sync, what=_describe(impl)))
    if timer is not None:
        call = (_atiming if in_loop else _timing)(impl, call, timer)
    if impl.once:
        call = _once(impl, call, discard)
    return call


def call_chain(steps: Steps, data: Any, context: Any, outcomes: Outcomes) -> Any:
    """Run a hook's steps synchronously; async handlers are driven to completion."""
    for impl, call in steps:
        try:
            result = call(data, context)
            if type(result) is CoroutineType:
                result = run_sync(result, _describe(impl))
        except PROPAGATE as exc:
            if impl.restricted and not outcomes.hook_raised(impl, exc, data, context):
                continue
            raise
        except Exception as exc:
            outcomes.hook_failed(impl, exc, data, context)
            continue
        if result is not None and result is not data:
            data = outcomes.hook_changed(impl, data, result, context)
    return data


async def acall_chain(steps: Steps, data: Any, context: Any, outcomes: Outcomes) -> Any:
    """:func:`call_chain` inside an event loop: awaitables are awaited in it."""
    for impl, call in steps:
        try:
            result = call(data, context)
            if inspect.isawaitable(result):
                result = await result
        except PROPAGATE as exc:
            if impl.restricted and not outcomes.hook_raised(impl, exc, data, context):
                continue
            raise
        except Exception as exc:
            outcomes.hook_failed(impl, exc, data, context)
            continue
        if result is not None and result is not data:
            data = outcomes.hook_changed(impl, data, result, context)
    return data
