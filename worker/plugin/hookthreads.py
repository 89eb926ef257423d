"""Threads that run a plugin's timed sync hooks, so a caller can stop waiting.

Python cannot stop a running function. A sync hook with a timeout therefore runs
on one of its plugin's daemon threads while the caller (``worker.plugin.dispatch``)
waits at most the timeout; past it the caller gets a
:class:`~worker.errors.HookTimeout` and goes on, and the thread is *abandoned*:
it keeps running the hook until the hook returns, then serves again.

Bounds, per plugin: at most :data:`MAX_HUNG_CALLS` abandoned calls may still be
running; further calls are refused at once with a HookTimeout (``hung`` set)
until one returns, so a plugin that keeps hanging neither piles up threads nor
makes every chain wait its full timeout. At most :data:`MAX_IDLE_THREADS` idle
threads are kept. Threads are daemons (they never hold up process exit), and a
forked child starts with none.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from worker.errors import HookTimeout

#: Abandoned calls of one plugin that may still run before its calls are refused.
MAX_HUNG_CALLS = 4
#: Idle threads a plugin keeps for its next timed calls; others exit when done.
MAX_IDLE_THREADS = 4


class _Call:
    """One call handed to a thread; ``done`` is released when it has ended."""

    __slots__ = ("abandoned", "done", "error", "finished", "fn", "result", "vars")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.vars = contextvars.copy_context()  # the caller's log context (job id, ...)
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()
        self.finished = self.abandoned = False

    def run(self) -> None:
        try:
            self.result = self.vars.run(self.fn)
        except BaseException as exc:  # handed back to the caller, whatever it is
            self.error = exc


_every: weakref.WeakSet[HookThreads] = weakref.WeakSet()


class HookThreads:
    """The timed-call threads of one plugin (one instance per loaded plugin)."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self._reset()
        _every.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Call | None]] = []
        self._hung = 0
        self._closed = False

    @property
    def hung(self) -> int:
        """Abandoned calls still running now."""
        return self._hung

    def call(self, hook: str, timeout: float, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a call of ``hook``) on a thread and return its result or raise its
        exception; raise HookTimeout if it runs past ``timeout`` seconds."""
        call = _Call(fn)
        with self._lock:
            if self._hung >= MAX_HUNG_CALLS:
                raise HookTimeout(self.plugin, hook, timeout, hung=self._hung)
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), daemon=True,
                             name=f"sandrun-hook-{self.plugin}").start()
        inbox.put(call)
        if not call.done.acquire(timeout=timeout):
            with self._lock:
                if not call.finished:
                    call.abandoned = True
                    self._hung += 1
                    raise HookTimeout(self.plugin, hook, timeout)
        if call.error is not None:
            raise call.error
        return call.result

    def _serve(self, inbox: queue.SimpleQueue[_Call | None]) -> None:
        while (call := inbox.get()) is not None:
            call.run()
            with self._lock:
                call.finished = True
                self._hung -= call.abandoned
                keep = not self._closed and len(self._idle) < MAX_IDLE_THREADS
                if keep:
                    self._idle.append(inbox)
            call.done.release()
            if not keep:
                return

    def close(self) -> None:
        """Let idle threads exit now and busy ones when done (the plugin was unloaded)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


def _forget_all() -> None:
    """In a forked child: the parent's threads do not exist here."""
    for threads in list(_every):
        threads._reset()


os.register_at_fork(after_in_child=_forget_all)
