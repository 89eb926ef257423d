"""The ``scheduling`` plugin: priorities, far-future jobs, a fleet-wide concurrency cap,
backpressure and fair sharing.

``plugin`` holds the plugin and its hooks, ``config`` its options, ``store`` the
Redis store of held and fair jobs, ``leases`` the concurrency semaphore, ``cli``
the ``sandrun beat`` command it contributes (entry-point group ``sandrun.commands``),
which dispatches ``on_beat`` (``hooks``), the custom hook this plugin declares.

The names below are imported on first use (PEP 562), so that ``sandrun --help``,
which imports ``cli`` to list ``beat``, does not import the plugin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugins.scheduling.config import HOLD_PRIORITY, SchedulingConfig
    from plugins.scheduling.hooks import BEAT_HOOK
    from plugins.scheduling.plugin import SchedulingPlugin, scheduling_plugin

__all__ = ["BEAT_HOOK", "HOLD_PRIORITY", "SchedulingConfig", "SchedulingPlugin",
           "scheduling_plugin"]

_LAZY = {"BEAT_HOOK": "plugins.scheduling.hooks",
         "HOLD_PRIORITY": "plugins.scheduling.config",
         "SchedulingConfig": "plugins.scheduling.config",
         "SchedulingPlugin": "plugins.scheduling.plugin",
         "scheduling_plugin": "plugins.scheduling.plugin"}


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
