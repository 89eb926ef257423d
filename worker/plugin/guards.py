"""Capabilities the host hands a plugin only when it was granted them.

:class:`RefusedStorage` stands in for ``context.storage`` of a plugin without the
``storage`` permission: every call is logged, counted (``kind="permission"``, hook
label ``storage``: the refusal happens inside whatever hook made the call) and
raises :class:`~worker.errors.PermissionRefused`, which on_init turns into a load
error and a hook's isolation logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from worker.errors import PermissionRefused
from worker.stores.ops import Op
from worker.stores.storage import PluginStorage

#: ``refuse(plugin, hook, permission, tried)``: log and count one refusal.
Refuse = Callable[[str, str, str, str], None]


class RefusedStorage(PluginStorage):
    """Plugin storage of a plugin not granted ``storage``: every call is refused."""

    def __init__(self, plugin: str, refuse: Refuse) -> None:
        self.plugin, self._refuse = plugin, refuse

    def _no(self, operation: str, key: str) -> NoReturn:
        tried = f"call storage.{operation}({key!r})"
        self._refuse(self.plugin, "storage", "storage", tried)
        raise PermissionRefused(self.plugin, "storage", tried)

    def get(self, key: str, default: Any = None) -> Any:
        self._no("get", key)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._no("set", key)

    def delete(self, key: str) -> bool:
        self._no("delete", key)

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        self._no("incr", key)

    def keys(self, pattern: str = "*") -> list[str]:
        self._no("keys", pattern)

    def batch(self, *ops: Op) -> list[Any]:
        self._no("batch", ", ".join(getattr(op, "key", "?") for op in ops))
