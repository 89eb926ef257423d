"""The one place hooks are called: a registry of chains and the loop that runs them.

A chain is the tuple of implementations of one hook, sorted by priority (higher
first) and, for equal priority, by load order. The registry swaps in a new tuple
whenever it changes, so a running chain is never mutated under its feet and
dispatch takes no lock. The loop is deliberately one small function per flavour
(sync and async): each handler gets ``(data, context)``; a non-None return
replaces ``data``; an exception other than the propagated kinds is handed to
``on_error`` and the chain goes on.

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
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any

from worker.errors import HookCallError, HookControl, HookTimeout
from worker.plugin.hookthreads import HookThreads
from worker.plugin.impl import Chain, ErrorHandler, HookImpl, HookTimer
from worker.plugin.validation import CheckedPlugin


def implementations(item: CheckedPlugin, order: int, default_timeout: float) -> list[HookImpl]:
    """One plugin's handlers, ready to register. A handler's timeout is its
    ``@hook(timeout=...)``, else the plugin's ``hook_timeout``, else ``default_timeout``;
    the timed ones share one HookThreads for the plugin."""
    plugin_default = item.plugin.hook_timeout
    default = default_timeout if plugin_default is None else plugin_default
    threads = None
    impls = []
    for hook_name, options in item.hooks.items():
        fn = getattr(item.plugin, hook_name)
        priority = item.priority if options.priority is None else options.priority
        timeout = float(default if options.timeout is None else options.timeout)
        if timeout and threads is None:
            threads = HookThreads(item.name)
        impls.append(HookImpl(item.name, hook_name, fn, priority, options.once,
                              inspect.iscoroutinefunction(fn), order, timeout,
                              threads if timeout else None))
    return impls


#: Exceptions a hook raises on purpose; they stop the chain and reach the caller.
PROPAGATE: tuple[type[BaseException], ...] = (HookControl, HookCallError)


class HookRegistry:
    """Chains by hook name; add/remove replace tuples under a lock, reads take none."""

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self._lock = threading.Lock()

    def add(self, impls: list[HookImpl]) -> None:
        """Register implementations, keeping every chain in call order."""
        with self._lock:
            for impl in impls:
                chain = (*self.chains.get(impl.hook, ()), impl)
                self.chains[impl.hook] = tuple(sorted(chain, key=lambda i: (-i.priority, i.order)))

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
        return removed

    def discard(self, impl: HookImpl) -> None:
        """Unregister one implementation (a ``once`` hook that has run)."""
        self.remove(lambda i: i is impl)


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


def call_chain(chain: Chain, data: Any, context: Any, on_error: ErrorHandler,
               discard: Callable[[HookImpl], None]) -> Any:
    """Run ``chain`` synchronously; async handlers are driven to completion."""
    for impl in chain:
        if impl.once:
            discard(impl)
        try:
            if impl.timeout:
                result = _call_timed(impl, data, context)
            else:
                result = impl.function(data, context)
                if impl.is_async or type(result) is CoroutineType:
                    result = run_sync(result, f"hook {impl.hook} of plugin {impl.plugin!r}")
        except PROPAGATE:
            raise
        except Exception as exc:
            on_error(impl, exc, data, context)
            continue
        if result is not None:
            data = result
    return data


def call_chain_timed(chain: Chain, data: Any, context: Any, on_error: ErrorHandler,
                     discard: Callable[[HookImpl], None], *, timer: HookTimer) -> Any:
    """``call_chain`` that reports each handler's duration to ``timer`` (metrics on)."""
    for impl in chain:
        if impl.once:
            discard(impl)
        started = time.perf_counter()
        try:
            if impl.timeout:
                result = _call_timed(impl, data, context)
            else:
                result = impl.function(data, context)
                if impl.is_async or type(result) is CoroutineType:
                    result = run_sync(result, f"hook {impl.hook} of plugin {impl.plugin!r}")
        except PROPAGATE:
            timer(impl, time.perf_counter() - started)
            raise
        except Exception as exc:
            timer(impl, time.perf_counter() - started)
            on_error(impl, exc, data, context)
            continue
        timer(impl, time.perf_counter() - started)
        if result is not None:
            data = result
    return data


async def acall_chain(chain: Chain, data: Any, context: Any, on_error: ErrorHandler,
                      discard: Callable[[HookImpl], None]) -> Any:
    """Run ``chain`` inside an event loop, awaiting async handlers."""
    for impl in chain:
        if impl.once:
            discard(impl)
        try:
            if not impl.timeout:
                result = impl.function(data, context)
                if inspect.isawaitable(result):
                    result = await result
            elif impl.is_async:
                result = await _within(impl.function(data, context), impl)
            else:
                result = await asyncio.to_thread(_call_timed, impl, data, context)
        except PROPAGATE:
            raise
        except Exception as exc:
            on_error(impl, exc, data, context)
            continue
        if result is not None:
            data = result
    return data
