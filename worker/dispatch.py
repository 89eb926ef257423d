"""The one place hooks are called: a registry of chains and the loop that runs them.

A chain is the tuple of implementations of one hook, sorted by priority (higher
first) and, for equal priority, by load order. The registry swaps in a new tuple
whenever it changes, so a running chain is never mutated under its feet and
dispatch takes no lock. The loop is deliberately one small function per flavour
(sync and async): each handler gets ``(data, context)``; a non-None return
replaces ``data``; an exception other than the propagated kinds is handed to
``on_error`` and the chain goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import CoroutineType
from typing import Any

from worker.errors import HookCallError, HookControl


@dataclass(frozen=True, slots=True, eq=False)
class HookImpl:
    """One plugin's implementation of one hook."""

    plugin: str
    hook: str
    function: Callable[[Any, Any], Any]
    priority: int
    once: bool
    is_async: bool
    order: int


ErrorHandler = Callable[[HookImpl, Exception, Any, Any], None]
Chain = tuple[HookImpl, ...]
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

    def remove(self, predicate: Callable[[HookImpl], bool]) -> None:
        """Unregister every implementation for which ``predicate`` is true."""
        with self._lock:
            for name, chain in list(self.chains.items()):
                kept = tuple(i for i in chain if not predicate(i))
                if kept:
                    self.chains[name] = kept
                else:
                    del self.chains[name]

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


def call_chain(chain: Chain, data: Any, context: Any, on_error: ErrorHandler,
               discard: Callable[[HookImpl], None]) -> Any:
    """Run ``chain`` synchronously; async handlers are driven to completion."""
    for impl in chain:
        if impl.once:
            discard(impl)
        try:
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


HookTimer = Callable[[HookImpl, float], None]


def call_chain_timed(chain: Chain, data: Any, context: Any, on_error: ErrorHandler,
                     discard: Callable[[HookImpl], None], *, timer: HookTimer) -> Any:
    """``call_chain`` that reports each handler's duration to ``timer`` (metrics on)."""
    for impl in chain:
        if impl.once:
            discard(impl)
        started = time.perf_counter()
        try:
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
            result = impl.function(data, context)
            if inspect.isawaitable(result):
                result = await result
        except PROPAGATE:
            raise
        except Exception as exc:
            on_error(impl, exc, data, context)
            continue
        if result is not None:
            data = result
    return data
