"""The custom hook the scheduling plugin declares, in a module of its own so that
``sandrun beat`` can name it without importing the plugin (``sandrun --help``
lists the command and so imports its module)."""

from __future__ import annotations

#: The custom hook ``sandrun beat`` calls every interval (here: ``process_queue``).
BEAT_HOOK = "on_beat"
