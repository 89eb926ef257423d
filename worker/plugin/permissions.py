"""What a plugin may do: the documented permissions, what each hook outcome needs, and
the operator's narrowing (``SANDRUN_PLUGIN_PERMISSIONS``).

A plugin declares its permissions in ``PluginManifest.permissions``; the operator may
grant a subset (never more); dispatch refuses, at the call, a hook outcome that needs
a permission the plugin was not granted. What each one allows:

``job:transform``
    return a changed Job (``on_submit``), Publication (``on_publish``), Execution
    (``on_execute``) or JobBuilder (``on_build``).
``job:veto``
    raise :class:`~worker.errors.SubmissionRejected` (and ``PaymentRejected``,
    ``QueueFull``), :class:`~worker.errors.PublicationHeld`,
    :class:`~worker.errors.JobRejected`, :class:`~worker.errors.JobDeferred` or
    :class:`~worker.errors.DuplicateDelivery`: stop, hold or put back a job.
``result:transform``
    return a changed JobResult (``on_result``) or a replacement error
    (``on_error``), or raise :class:`~worker.errors.RetryRequested` from ``on_error``.
``storage``
    use ``context.storage`` (plugin storage); without it every call raises
    :class:`~worker.errors.PermissionRefused`.
``network``
    open connections (``socket.connect``/``sendto``/``sendmsg`` to an IP address)
    while one of its hooks runs; :mod:`worker.plugin.netguard` says what it cannot see.
``secrets``
    see job env values and auth material (headers such as ``sandrun_auth``); without
    it a plugin is handed copies with those values redacted (:mod:`worker.plugin.redact`).

A plugin without a manifest, or whose manifest leaves ``permissions`` unset (None),
declares nothing: it is *undeclared* and gets every permission (a warning at load),
which the operator may still narrow. Plugins loaded by entry-point name (installed
packages) must declare. ``on_worker_start``/``on_worker_stop``, custom hooks, and
on_init/on_destroy need no permission for their outcomes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from worker.errors import (
    ConfigurationError,
    DuplicateDelivery,
    JobDeferred,
    JobRejected,
    PublicationHeld,
    RetryRequested,
    SubmissionRejected,
)

PERMISSIONS: dict[str, str] = {
    "job:transform": "return a changed Job, Publication, Execution or JobBuilder",
    "job:veto": "reject, hold, defer or drop a job (SubmissionRejected, PublicationHeld, "
                "JobRejected, JobDeferred, DuplicateDelivery)",
    "result:transform": "return a changed JobResult or error, or ask for a retry",
    "storage": "use plugin storage (context.storage)",
    "network": "open network connections while a hook runs",
    "secrets": "see job env values and auth material",
}
ALL: frozenset[str] = frozenset(PERMISSIONS)
SETTING = "SANDRUN_PLUGIN_PERMISSIONS"

#: The permission a hook needs to replace its data by returning a changed value.
RETURN_NEEDS: dict[str, str] = {
    "on_build": "job:transform", "on_submit": "job:transform", "on_publish": "job:transform",
    "on_execute": "job:transform", "on_result": "result:transform",
    "on_error": "result:transform",
}
#: The permission each control-flow exception needs (checked in this order: subclasses
#: such as QueueFull are SubmissionRejected). Others (StartupRefused, a custom hook's
#: own) need none.
RAISE_NEEDS: tuple[tuple[type[BaseException], str], ...] = (
    (SubmissionRejected, "job:veto"), (PublicationHeld, "job:veto"),
    (JobRejected, "job:veto"), (JobDeferred, "job:veto"), (DuplicateDelivery, "job:veto"),
    (RetryRequested, "result:transform"),
)

_ITEM = re.compile(r"^\s*([a-z][a-z0-9_.-]{0,63})\s*=\s*([^=]*)$")


def unknown(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not documented permissions, sorted."""
    return sorted(set(names) - ALL)


def raise_needs(exc: BaseException) -> str | None:
    """The permission raising ``exc`` from a hook needs, or None."""
    for kind, permission in RAISE_NEEDS:
        if isinstance(exc, kind):
            return permission
    return None


def _fix() -> str:
    return (f"write it as 'name=perm,perm;other=perm' (an empty list grants nothing), "
            f"with permissions among {', '.join(sorted(ALL))}")


def parse_plugin_permissions(raw: str | None) -> dict[str, frozenset[str]]:
    """Parse ``SANDRUN_PLUGIN_PERMISSIONS``: ``retry=storage,result:transform;quota=``.

    Items are separated by ``;``; each names a plugin and, after ``=``, the
    comma-separated permissions it is granted (a subset of what it declares). Raise
    ConfigurationError saying which item is wrong and how to write it."""
    grants: dict[str, frozenset[str]] = {}
    for index, item in enumerate((raw or "").split(";")):
        if not item.strip():
            continue
        match = _ITEM.match(item)
        if match is None:
            raise ConfigurationError(f"{SETTING} item {index + 1} ({item.strip()!r}) is not "
                                     f"'plugin-name=permissions'; {_fix()}")
        name, listed = match.group(1), match.group(2)
        perms = frozenset(p.strip() for p in listed.split(",") if p.strip())
        bad = unknown(perms)
        if bad:
            raise ConfigurationError(f"{SETTING}: plugin {name!r} is granted unknown "
                                     f"permission(s) {', '.join(bad)}; {_fix()}")
        if name in grants:
            raise ConfigurationError(f"{SETTING} names plugin {name!r} twice; list its "
                                     "permissions once")
        grants[name] = perms
    return grants


def effective(name: str, declared: frozenset[str] | None,
              narrowings: Mapping[str, frozenset[str] | None]) -> frozenset[str]:
    """What plugin ``name`` is granted: what it declares (everything when undeclared),
    narrowed by each of ``narrowings`` (where it was set: permissions, or None for
    not narrowed there). Raise ConfigurationError when one grants more than declared."""
    granted = ALL if declared is None else declared
    for where, subset in narrowings.items():
        if subset is None:
            continue
        extra = sorted(subset - declared) if declared is not None else []
        if extra:
            raise ConfigurationError(
                f"{where} grants plugin {name!r} {', '.join(extra)}, which it does not "
                f"declare (it declares: {', '.join(sorted(declared or ())) or 'nothing'}); "
                "an operator can only narrow what a plugin declares: remove "
                f"{', '.join(extra)}")
        granted = granted & subset
    return granted
