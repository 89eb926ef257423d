"""What the manager does with a handler's outcome: a fault, a change, a control-flow raise.

Dispatch (:mod:`worker.plugin.dispatch`) reports here only what needs a decision:
a handler that raised or timed out (isolated: logged, counted, the chain goes on),
one that returned another object than its input (checked against its plugin's
permissions, its changed fields recorded as provenance), and a control-flow
exception raised by a plugin that lacks some permission (a refused veto is
ignored). Refusals are logged (``hook_permission_refused``, with what was tried)
and counted in ``sandrun_plugin_hook_errors_total{plugin,hook,kind="permission"}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from worker.collector import MetricsCollector
from worker.errors import HookTimeout, PermissionRefused
from worker.logs import get_logger
from worker.plugin import permissions, provenance
from worker.plugin.impl import HookImpl

log = get_logger("sandrun.plugins")
ERRORS_METRIC = "sandrun_plugin_hook_errors_total"
ERRORS_DOC = ("Hook calls that raised (kind=error), timed out (kind=timeout) or used a "
              "permission their plugin was not granted (kind=permission)")


def _job_id(data: Any, context: Any) -> Any:
    return getattr(context, "job_id", None) or getattr(data, "id", None)


class HookOutcomes:
    """The manager's side of :class:`~worker.plugin.impl.Outcomes`.

    Expects ``metrics``, ``hook_errors``, ``hook_timeouts`` and ``_emit_error`` from
    the class it is mixed into."""

    metrics: MetricsCollector
    hook_errors: Counter[tuple[str, str]]
    hook_timeouts: Counter[tuple[str, str]]
    _emit_error: Callable[[HookImpl, Exception, Any], None]

    def count_fault(self, plugin: str, hook: str, kind: str) -> None:
        """Count one fault of ``plugin`` in ``hook`` (kind error, timeout or permission)."""
        self.hook_errors[(plugin, hook)] += 1
        if kind == "timeout":
            self.hook_timeouts[(plugin, hook)] += 1
        self.metrics.counter(ERRORS_METRIC, ERRORS_DOC, ("plugin", "hook", "kind")).labels(
            plugin=plugin, hook=hook, kind=kind).inc()

    def refuse(self, plugin: str, hook: str, permission: str, tried: str,
               job_id: Any = None) -> None:
        """Log and count a refused use of ``permission`` (``tried``: what the plugin did)."""
        log.warning("hook_permission_refused", plugin=plugin, hook=hook,
                    permission=permission, tried=tried, job_id=job_id)
        self.count_fault(plugin, hook, "permission")

    def hook_failed(self, impl: HookImpl, exc: Exception, data: Any, context: Any) -> None:
        """A handler raised or timed out: log, count (per plugin, hook and kind), notify."""
        job_id = _job_id(data, context)
        where = {"plugin": impl.plugin, "hook": impl.hook}
        if isinstance(exc, PermissionRefused):  # counted where it was refused (storage)
            log.warning("hook_failed", **where, job_id=job_id, error_type="PermissionRefused",
                        error=str(exc))
        elif isinstance(exc, HookTimeout):
            log.error("hook_timed_out", **where, job_id=job_id, timeout=exc.timeout,
                      hung_calls=exc.hung, error=str(exc))
            self.count_fault(impl.plugin, impl.hook, "timeout")
        else:
            log.error("hook_failed", **where, job_id=job_id, error_type=type(exc).__name__,
                      error=str(exc), exc_info=exc)
            self.count_fault(impl.plugin, impl.hook, "error")
        self._emit_error(impl, exc, job_id)

    def hook_changed(self, impl: HookImpl, old: Any, new: Any, context: Any) -> Any:
        """A handler returned ``new``: keep it if its plugin may change this data (and
        record the changed fields), else refuse it and go on with ``old``. Hooks whose
        data is not a job or result (custom hooks, ``on_worker_start``) are not checked."""
        need = permissions.RETURN_NEEDS.get(impl.hook)
        if need is None:
            return new
        granted = need in impl.granted
        if granted and not isinstance(getattr(context, "provenance", None), list):
            return new  # allowed, and nowhere to record it: no diff needed
        fields = provenance.changed_fields(old, new)
        if not fields:
            return old  # an equal copy: nothing changed, nothing to allow
        if not granted:
            self.refuse(impl.plugin, impl.hook, need, f"change {', '.join(fields)}",
                        _job_id(old, context))
            return old
        provenance.record(context, impl.plugin, impl.hook, fields)
        return new

    def hook_raised(self, impl: HookImpl, exc: BaseException, data: Any, context: Any) -> bool:
        """A restricted plugin raised a control-flow exception: let it through (True)
        when it holds the permission the exception needs, else refuse it (False)."""
        need = permissions.raise_needs(exc)
        if need is None or need in impl.granted:
            return True
        self.refuse(impl.plugin, impl.hook, need, f"raise {type(exc).__name__}: {exc}",
                    _job_id(data, context))
        return False
