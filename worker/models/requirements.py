"""A job's ``requirements``: plain package names with version specifiers, nothing else.

Why so strict: the worker installs them with pip from its own wheel cache
(:mod:`worker.sandbox.layers`), and pip reads much more than names from a
requirement line: URLs (``name @ https://...``), paths (``./pkg``), options
(``--index-url``, ``-e``, ``-r other.txt``) and hashes. Each of those would let a
job steer what the worker fetches or runs, so only what
:class:`packaging.requirements.Requirement` parses as a name, extras, specifier
and marker, without a URL, is accepted.

The normalized form (canonical name, sorted extras, sorted specifiers, marker)
makes two spellings of one set (``Tomli>=2`` and ``tomli >= 2``) one cache key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

MAX_REQUIREMENTS = 64
MAX_REQUIREMENT_CHARS = 200


def check_requirement(text: str) -> str:
    """``text`` in its normalized form, or ValueError saying why it is not a plain
    ``name[extras] specifier ; marker`` requirement."""
    line = text.strip()
    if not line or len(line) > MAX_REQUIREMENT_CHARS:
        raise ValueError(f"requirement {text!r} must be 1 to {MAX_REQUIREMENT_CHARS} characters")
    if line.startswith("-"):
        raise ValueError(f"requirement {text!r} is a pip option; only package names with "
                         "version specifiers are accepted (e.g. 'tomli>=2')")
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise ValueError(f"requirement {text!r} is not a package name with an optional "
                         f"version specifier (e.g. 'tomli>=2'): {exc}") from None
    if req.url:
        raise ValueError(f"requirement {text!r} names a URL or path; only packages from the "
                         "worker's wheel cache can be installed, so give a name such as "
                         f"{req.name!r}")
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in req.extras))}]" \
        if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}"


def normalize(requirements: Iterable[str]) -> tuple[str, ...]:
    """The requirement set, each normalized, sorted and without duplicates."""
    out = sorted({check_requirement(r) for r in requirements})
    if len(out) > MAX_REQUIREMENTS:
        raise ValueError(f"{len(out)} requirements given; at most {MAX_REQUIREMENTS} are "
                         "accepted (ask the operator for a prepared environment instead)")
    return tuple(out)


def parse_requirements_file(text: str) -> list[str]:
    """The requirement lines of a ``requirements.txt``: comments and blank lines skipped;
    options (``-r``, ``-e``, ``--index-url``...) and URLs are refused by
    :func:`check_requirement`, so a file cannot say more than a list could."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def requirement_key(requirements: Iterable[str], python: str) -> str:
    """SHA-256 (hex) of the normalized set and the target Python's ``X.Y``: one layer
    per set and interpreter version, whatever order or spelling a job used."""
    material = "\n".join((f"python={python}", *normalize(requirements)))
    return hashlib.sha256(material.encode()).hexdigest()
