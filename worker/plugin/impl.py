"""What the registry holds: one plugin's implementation of one hook, the steps dispatch
runs, and the shapes of the callbacks dispatch reports to.

Kept apart from :mod:`worker.plugin.dispatch` so the contexts can name a hook
timer's type without importing the dispatch loop (and the loop's imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.plugin.hookthreads import HookThreads


@dataclass(frozen=True, slots=True, eq=False)
class HookImpl:
    """One plugin's implementation of one hook; ``timeout`` 0 means no limit, else
    ``threads`` runs its sync calls."""

    plugin: str
    hook: str
    function: Callable[[Any, Any], Any]
    priority: int
    once: bool
    is_async: bool
    order: int
    timeout: float = 0.0
    threads: HookThreads | None = None


#: A hook's implementations in call order.
Chain = tuple[HookImpl, ...]
#: What dispatch calls with ``(data, context)`` for one implementation.
Call = Callable[[Any, Any], Any]
#: A chain as dispatch runs it: each implementation beside the callable that runs it
#: (the handler, wrapped in its timeout, the hook timer and ``once`` where they apply).
Steps = tuple[tuple[HookImpl, Call], ...]
#: Called with a handler that raised (or timed out), the exception, the data and context.
ErrorHandler = Callable[[HookImpl, Exception, Any, Any], None]
#: Called with each handler and its duration in seconds, when hook timing is on.
HookTimer = Callable[[HookImpl, float], None]
