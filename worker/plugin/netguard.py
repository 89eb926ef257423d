"""The ``network`` permission, enforced where Python can see it: an audit hook.

While a hook of a plugin without ``network`` runs, a thread-local (sync hooks) or a
context variable (async hooks) names it; an
audit hook (:func:`sys.addaudithook`, installed in a process the first time such a
plugin registers) refuses ``socket.connect``, ``socket.sendto`` and ``socket.sendmsg``
to an IP address with :class:`~worker.errors.PermissionRefused`, logged and counted
(``kind="permission"``, the hook's name). Connections the host makes for the plugin
(plugin storage and dead letters reaching Redis: frames of ``worker.stores`` or
``worker.broker`` between the hook and the socket) are the host's and allowed, and
so are unix sockets.

What it cannot see, and therefore does not enforce (the permission is then the
plugin's declaration only): threads the plugin starts (they do not inherit the
variable), subprocesses, C extensions that open sockets without Python's socket
module, and code that goes through the host's own helpers on purpose. Plugins run
in the worker's process: this catches a plugin that uses the network without
declaring it, it does not contain one that means to hide it.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from types import FrameType
from typing import Any

from worker.errors import PermissionRefused

#: ``refuse(plugin, hook, permission, tried)``, as the manager's.
Refuse = Callable[[str, str, str, str], None]
EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
HOST_MODULES = ("worker.stores.", "worker.broker.")
DISPATCH_MODULE = "worker.plugin.dispatch"

Marker = tuple[str, str, Refuse]
#: Async handlers: a context variable (coroutines of one loop interleave on a thread).
_running: ContextVar[Marker | None] = ContextVar("sandrun_no_network", default=None)


class _Local(threading.local):
    """Sync handlers: a thread-local, cheaper to set than a context variable, and
    right for them: a sync handler runs to its end on its thread without yielding."""

    running: Marker | None = None


_local = _Local()
_installed: list[bool] = []  # one entry once the audit hook is in (a process-wide fact)
_install_lock = threading.Lock()


def _host_call(frame: FrameType | None) -> bool:
    """Whether the connection is not the guarded hook's own: a host module sits between
    the socket call and the hook, or a dispatch loop does (the hook dispatched a chain
    whose handler, of a plugin with ``network``, is the one connecting)."""
    while frame is not None and frame.f_code not in _GUARDS:
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith(HOST_MODULES) or module == DISPATCH_MODULE:
            return True
        frame = frame.f_back
    return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in EVENTS:
        return
    running = _local.running or _running.get()
    if running is None or len(args) < 2 or not isinstance(args[1], tuple):
        return  # no restricted hook running, or a unix socket
    if _host_call(sys._getframe(1)):
        return
    plugin, hook, refuse = running
    tried = f"{event.split('.')[1]} to {args[1][0]}:{args[1][1] if len(args[1]) > 1 else ''}"
    refuse(plugin, hook, "network", tried)
    raise PermissionRefused(plugin, "network", tried)


def install() -> None:
    """Add the audit hook to this process, once (audit hooks cannot be removed)."""
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)
            _installed.append(True)


def guarded(fn: Callable[[Any, Any], Any], plugin: str, hook: str, is_async: bool,
            refuse: Refuse) -> Callable[[Any, Any], Any]:
    """``fn`` run with its plugin marked as having no network."""
    marker = (plugin, hook, refuse)
    if is_async:
        @functools.wraps(fn)
        async def aguard(data: Any, context: Any) -> Any:
            token = _running.set(marker)
            try:
                return await fn(data, context)
            finally:
                _running.reset(token)
        return aguard

    @functools.wraps(fn)
    def guard(data: Any, context: Any) -> Any:
        previous = _local.running
        _local.running = marker
        try:
            return fn(data, context)
        finally:
            _local.running = previous
    return guard


def _guard_codes() -> frozenset[Any]:
    sample = guarded(lambda d, c: None, "", "", False, lambda *a: None)
    asample = guarded(lambda d, c: None, "", "", True, lambda *a: None)
    return frozenset({sample.__code__, asample.__code__})


_GUARDS = _guard_codes()
