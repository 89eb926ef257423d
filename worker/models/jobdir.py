"""Parsing of the Sandrun job manifest (``job.json``) into a :class:`~worker.models.Job`.

The manifest is the format producers keep next to their code::

    {"entrypoint": "main.py", "interpreter": "python3", "args": ["--input", "data.csv"],
     "env": {"PYTHONPATH": "./lib"}, "outputs": ["results/", "*.png"],
     "requirements": ["tomli>=2"], "timeout": 300, "memory_mb": 512,
     "cpu_seconds": 10, "gpu": {"required": true, "min_vram_gb": 8}}

Given a directory (or the path of its ``job.json``), every regular file under it
becomes one of the job's files; symlinks that point outside it are refused.
Every problem is reported at once as :class:`~worker.errors.InvalidJob`, one
``field: rule`` line each.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import InvalidJob
from worker.models.limits import (
    DEFAULT_CPU_SECONDS,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_CPU_SECONDS,
    MAX_JOB_BYTES,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_SECONDS,
)

MANIFEST_NAME = "job.json"
SKIPPED_DIRS = frozenset({".git", "__pycache__", "node_modules", ".venv"})


class ManifestGPU(BaseModel):
    """The manifest's ``gpu`` block."""

    model_config = ConfigDict(extra="forbid")
    required: bool = True
    device_id: int | None = Field(default=None, ge=0)
    min_vram_gb: float | None = Field(default=None, gt=0)
    cuda_version: str | None = None
    compute_capability: str | None = None
    type: str | None = None
    count: int = Field(default=1, ge=1, le=16)


class Manifest(BaseModel):
    """``job.json`` exactly as documented: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")
    entrypoint: str
    interpreter: str | None = None
    environment: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=lambda: ["*"])
    requirements: str | list[str] | None = None
    timeout: int = Field(default=DEFAULT_TIMEOUT_SECONDS, ge=1, le=MAX_TIMEOUT_SECONDS)
    memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=1, le=MAX_MEMORY_MB)
    cpu_seconds: int = Field(default=DEFAULT_CPU_SECONDS, ge=1, le=MAX_CPU_SECONDS)
    gpu: ManifestGPU | None = None


def problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``field: rule`` pairs, one per error pydantic found, in the manifest's words."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "manifest"
        rule = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            rule = "unknown field; check the spelling against the manifest format"
        elif "input" in err and err["type"] not in {"missing"}:
            rule = f"{rule} (got {err['input']!r})"
        out.append((field, rule))
    return out


def read_job_files(root: Path) -> dict[str, dict[str, Any]]:
    """Read every regular file under ``root`` (except ``job.json``) as job files."""
    root = root.resolve()
    files: dict[str, dict[str, Any]] = {}
    total = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIPPED_DIRS for part in rel.parts) or rel.as_posix() == MANIFEST_NAME:
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise InvalidJob([(rel.as_posix(), "symlink points outside the job directory")],
                             source=f"job directory {root}")
        if not path.is_file():
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_JOB_BYTES:
            raise InvalidJob([("files", f"job files exceed {MAX_JOB_BYTES // 2**20} MiB; "
                               "ship large inputs separately")], source=f"job directory {root}")
        executable = bool(path.stat().st_mode & 0o111)
        try:
            files[rel.as_posix()] = {"content": data.decode("utf-8"), "executable": executable}
        except UnicodeDecodeError:
            files[rel.as_posix()] = {"content": base64.b64encode(data).decode("ascii"),
                                     "encoding": "base64", "executable": executable}
    return files


def _read_source(source: Any) -> tuple[Mapping[str, Any], dict[str, Any] | None, str]:
    if isinstance(source, Mapping):
        return source, None, "manifest"
    path = Path(source)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InvalidJob([("manifest", f"{path} does not exist; give a directory holding "
                           f"{MANIFEST_NAME} or the path of a {MANIFEST_NAME}")])
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJob([("manifest", f"{path} is not valid JSON: {exc}")]) from exc
    if not isinstance(raw, dict):
        raise InvalidJob([("manifest", f"{path} must hold a JSON object")])
    return raw, read_job_files(path.parent), str(path)


def manifest_fields(source: Any, *, files: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate a manifest and return the Job fields it sets (unset fields left out).

    Leaving unset fields out lets builders and ``on_build`` hooks tell a value
    the producer chose from a default; the Job's defaults equal the manifest's.
    """
    raw, dir_files, where = _read_source(source)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidJob(problems(exc), source=where) from None
    data = manifest.model_dump(exclude_unset=True)
    data["files"] = {**(dir_files or {}), **(files or {})}
    return data

