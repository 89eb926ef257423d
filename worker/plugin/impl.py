"""What the registry holds: one plugin's implementation of one hook, the steps dispatch
runs, and the shapes of the callbacks dispatch reports to.

Kept apart from :mod:`worker.plugin.dispatch` so the contexts can name a hook
timer's type without importing the dispatch loop (and the loop's imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from worker.plugin.hookthreads import HookThreads
from worker.plugin.permissions import ALL


@dataclass(frozen=True, slots=True, eq=False)
class HookImpl:
    """One plugin's implementation of one hook; ``timeout`` 0 means no limit, else
    ``threads`` runs its sync calls. ``granted``: the plugin's permissions;
    ``restricted``: it lacks some, so dispatch checks what its calls return or raise."""

    plugin: str
    hook: str
    function: Callable[[Any, Any], Any]
    priority: int
    once: bool
    is_async: bool
    order: int
    timeout: float = 0.0
    threads: HookThreads | None = None
    granted: frozenset[str] = ALL
    restricted: bool = False


#: A hook's implementations in call order.
Chain = tuple[HookImpl, ...]
#: What dispatch calls with ``(data, context)`` for one implementation.
Call = Callable[[Any, Any], Any]
#: A chain as dispatch runs it: each implementation beside the callable that runs it
#: (the handler, wrapped in its timeout, the hook timer and ``once`` where they apply).
Steps = tuple[tuple[HookImpl, Call], ...]


class Outcomes(Protocol):
    """What dispatch reports a handler's outcomes to (the manager)."""

    def hook_failed(self, impl: HookImpl, exc: Exception, data: Any, context: Any) -> None:
        """A handler raised (or timed out): the chain goes on with ``data``."""

    def hook_changed(self, impl: HookImpl, old: Any, new: Any, context: Any) -> Any:
        """A handler returned ``new``, another object than ``old``: the data to go on with
        (``new``, or ``old`` when the change is refused)."""

    def hook_raised(self, impl: HookImpl, exc: BaseException, data: Any, context: Any) -> bool:
        """A handler of a ``restricted`` plugin raised a control-flow exception: True to
        let it propagate, False to ignore it (refused)."""

#: Called with each handler and its duration in seconds, when hook timing is on.
HookTimer = Callable[[HookImpl, float], None]
