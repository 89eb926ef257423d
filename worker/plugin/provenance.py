"""Provenance: which plugin's hook changed which fields of the data it was handed.

When a hook returns a changed value and its plugin may make that change, the
manager appends a :class:`~worker.models.Transform` (plugin, hook, the names of
the fields that differ) to the context's ``provenance`` list. The client sends the
``on_submit`` entries to the worker in the ``sandrun_provenance`` header; the worker
adds those of ``on_execute`` and ``on_result`` and stores the list with the result,
so ``sandrun result ID --json`` says which plugins transformed the job. Only field
*names* are recorded, never values: a diff of env would leak what ``secrets`` guards.

The diff is computed only when a hook returned another object than its input (the
one case dispatch reports), one level deep plus one nested model (``job.timeout``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from worker.models import Transform

#: Message header carrying the ``on_submit`` provenance (JSON, compact).
PROVENANCE_HEADER = "sandrun_provenance"
#: A header longer than this is dropped unread (it is the sender's word).
HEADER_LIMIT = 8192
MAX_ENTRIES = 64
WHOLE = "*"
_MISSING = object()


def _mapping_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in {*old, *new} if old.get(k, _MISSING) != new.get(k, _MISSING))



def _model_diff(old: BaseModel, new: BaseModel, prefix: str, depth: int) -> list[str]:
    out: list[str] = []
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if depth and isinstance(a, BaseModel) and type(a) is type(b):
            out.extend(_model_diff(a, b, f"{prefix}{name}.", depth - 1) or [prefix + name])
        else:
            out.append(prefix + name)
    return out


def changed_fields(old: Any, new: Any) -> list[str]:
    """The names of the fields that differ between ``old`` and ``new`` ([] when equal,
    ``["*"]`` when they cannot be compared field by field, such as a replaced error)."""
    if type(old) is not type(new):
        return [WHOLE]
    if isinstance(old, BaseModel):
        return _model_diff(old, new, "", 1)
    if dataclasses.is_dataclass(old) and not isinstance(old, type):
        return [f.name for f in dataclasses.fields(old)
                if getattr(old, f.name) != getattr(new, f.name)]
    fields = getattr(old, "fields", None)
    if isinstance(fields, Mapping):  # a JobBuilder: what it would set
        return _mapping_diff(fields, getattr(new, "fields", {}))
    return [] if old == new else [WHOLE]


def record(context: Any, plugin: str, hook: str, fields: list[str]) -> None:
    """Append a Transform to ``context.provenance``, when the context keeps one."""
    entries = getattr(context, "provenance", None)
    if isinstance(entries, list) and len(entries) < MAX_ENTRIES:
        entries.append(Transform(plugin=plugin, hook=hook, fields=fields[:64]))


def to_header(entries: list[Transform]) -> str:
    """The header value for ``entries``."""
    return json.dumps([e.model_dump() for e in entries], separators=(",", ":"))


def from_header(raw: Any) -> list[Transform] | None:
    """The entries a header carries; None when it is malformed or too large (the caller
    logs that; the job runs either way, provenance is a record, not a control)."""
    if not isinstance(raw, str) or len(raw) > HEADER_LIMIT:
        return None
    try:
        items = json.loads(raw)
        if not isinstance(items, list) or len(items) > MAX_ENTRIES:
            return None
        return [Transform.model_validate(item) for item in items]
    except (ValueError, ValidationError):
        return None
