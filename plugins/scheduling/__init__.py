"""The ``scheduling`` plugin: priorities, far-future jobs, a fleet-wide concurrency cap,
backpressure and fair sharing.

``plugin`` holds the plugin and its hooks, ``config`` its options, ``store`` the
Redis store of held and fair jobs, ``leases`` the concurrency semaphore, ``cli``
the ``sandrun beat`` command it contributes (entry-point group ``sandrun.commands``),
which dispatches ``on_beat``, the custom hook this plugin declares.
"""

from __future__ import annotations

from plugins.scheduling.config import HOLD_PRIORITY, SchedulingConfig
from plugins.scheduling.plugin import BEAT_HOOK, SchedulingPlugin, scheduling_plugin

__all__ = ["BEAT_HOOK", "HOLD_PRIORITY", "SchedulingConfig", "SchedulingPlugin",
           "scheduling_plugin"]
