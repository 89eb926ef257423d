"""Durations as people write them: ``30s``, ``5m``, ``1h30m``, ``2d``, or plain seconds.

Used for a job's ``expires_in`` (the builder, ``sandrun submit --expires-in``) and
anything else a person types as a length of time. A bad value raises ValueError
saying what is accepted, so a CLI or a pydantic validator can show it as it is.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_FORMAT = "a duration such as 30s, 5m, 1h30m, 2d or a number of seconds"


def parse_duration(value: str | float | timedelta) -> float:
    """Seconds in ``value``: a number (seconds), a ``timedelta``, or text of number-unit
    parts (``ms``, ``s``, ``m``, ``h``, ``d``). Refuses zero, negative, NaN and infinity,
    since a length of time that is none of these is a typo."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"expected {_FORMAT}, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        seconds = _parse_text(str(value))
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected a positive {_FORMAT}, got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    compact = text.strip().lower().replace(" ", "")
    try:
        return float(compact)
    except ValueError:
        pass
    pos, total = 0, 0.0
    while pos < len(compact):
        match = _PART.match(compact, pos)
        if match is None:
            raise ValueError(f"expected {_FORMAT}, got {text!r}")
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if not compact:
        raise ValueError(f"expected {_FORMAT}, got an empty string")
    return total
