"""Limits and names every job shares: bounds, defaults, the interpreter by
extension, the environment a job may never set, and the check that keeps a path
inside the job directory.

Imported by the models and by the job-directory reader, which must not import
each other's classes.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import ConfigDict, StringConstraints

MAX_TIMEOUT_SECONDS = 3600
MAX_MEMORY_MB = 2048
MAX_CPU_SECONDS = 3600
DEFAULT_TIMEOUT_SECONDS = 300
DEFAULT_MEMORY_MB = 512
DEFAULT_CPU_SECONDS = 10
MAX_JOB_BYTES = 16 * 1024 * 1024

#: Interpreter inferred from an entrypoint's extension when none is given.
INTERPRETERS_BY_EXTENSION = {
    ".py": "python3",
    ".js": "node",
    ".mjs": "node",
    ".cjs": "node",
    ".sh": "bash",
    ".bash": "bash",
    ".rb": "ruby",
    ".r": "Rscript",
    ".pl": "perl",
}

#: Environment keys a job may never set: they change how the loader or the
#: interpreter itself behaves, so they would let a job escape its limits.
FORBIDDEN_ENV_KEYS = frozenset(
    {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONSTARTUP", "PYTHONINSPECT",
     "NODE_OPTIONS", "BASH_ENV", "ENV", "PERL5OPT", "RUBYOPT", "IFS"}
)
FORBIDDEN_ENV_PREFIXES = ("SANDRUN_", "CELERY_", "DYLD_")


Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EnvKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_./-]{0,62}$")]
JobStatus = Literal["completed", "failed", "cancelled", "rejected", "timeout", "disputed",
                    "expired"]
#: Finer than the status: why a job ended the way it did.
Outcome = Literal["completed", "failed", "timeout", "memory_limit", "cpu_limit", "process_limit",
                  "signal", "rejected", "cancelled", "worker_lost", "isolation_unavailable",
                  "unsatisfiable", "disputed", "expired", "environment_error"]
Isolation = Literal["process", "network"]
FINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "failed", "cancelled", "rejected", "timeout", "disputed", "expired"})

#: The config of every model: immutable, unknown fields refused.
FROZEN = ConfigDict(frozen=True, extra="forbid")


def check_relative_path(path: str, what: str = "path") -> str:
    """Return ``path`` normalised, or raise ValueError if it could leave the job directory."""
    if not path or "\x00" in path:
        raise ValueError(f"{what} must be a non-empty path without NUL bytes")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"{what} {path!r} is absolute; use a path relative to the job directory")
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"{what} {path!r} contains '..'; paths must stay inside the job directory")
    return posixpath.normpath("/".join(parts))
