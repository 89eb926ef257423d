"""Collecting a finished job's output files from its directory.

Collection follows the job's glob patterns (``"results/"`` takes a whole
directory, ``"*.png"`` the matching files), takes regular files only (a
symlink the job planted, say to ``/etc/passwd``, is never followed), and stops
at per-file and total size caps.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from worker.models import OutputFile
from worker.stores.outputs import CollectedOutput


def _walk(root: Path, start: Path) -> list[Path]:
    if start.is_symlink():
        return []
    if start.is_file():
        return [start]
    found = []
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath) / name for name in sorted(filenames)]
    return found


def collect_outputs(root: Path, patterns: list[str], file_cap: int, total_cap: int,
                    inputs: dict[str, str] | None = None) -> tuple[list[CollectedOutput], bool]:
    """Files under ``root`` matching ``patterns``; True as second value if a cap cut some.

    ``inputs`` maps the job's own files to their sha256: an input the job left
    unchanged is not an output.
    """
    inputs = inputs or {}
    seen: dict[str, Path] = {}
    for pattern in patterns:
        for match in sorted(root.glob(pattern.rstrip("/") or "*")):
            for path in _walk(root, match):
                rel = path.relative_to(root).as_posix()
                if not rel.startswith("__sandrun_main__"):
                    seen.setdefault(rel, path)
    collected: list[CollectedOutput] = []
    total, truncated = 0, False
    for rel, path in sorted(seen.items()):
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            continue
        if info.st_size > file_cap or total + info.st_size > total_cap:
            truncated = True
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if inputs.get(rel) == digest:
            continue
        total += len(data)
        collected.append(CollectedOutput(OutputFile(path=rel, size=len(data), sha256=digest),
                                         data))
    return collected, truncated
