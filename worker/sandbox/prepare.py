"""Writing a job into its directory: files, the script, argv and environment.

Everything here is decided by the job, so every path is re-checked (nothing is
followed outside the directory), the interpreter must be allowed and installed,
and the environment starts from a minimal base: the worker's own environment,
broker URLs and ``SANDRUN_*``/``CELERY_*`` variables never reach the job.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from worker.models import FORBIDDEN_ENV_KEYS, FORBIDDEN_ENV_PREFIXES, Job

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_INTERPRETERS = frozenset(
    {"python3", "python", "bash", "sh", "node", "ruby", "Rscript", "perl"})
SCRIPT_SUFFIX = {"python3": ".py", "python": ".py", "node": ".js", "bash": ".sh", "sh": ".sh",
                 "ruby": ".rb", "Rscript": ".R", "perl": ".pl"}
#: Interpreters that reserve large virtual ranges at start (V8): limit data, not address space.
DATA_LIMITED = frozenset({"node"})

class SandboxError(Exception):
    """The job cannot be run as given (bad file layout, interpreter not allowed)."""


class EnvironmentUnavailable(Exception):
    """The job's environment or requirements cannot be provided here (outcome
    ``environment_error``, :mod:`worker.sandbox.environments`); the message says what is
    missing and how to fix it."""


def job_environment(job: Job, workdir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The job's whole environment: a minimal base, worker-chosen extras, then the job's env."""
    for key in job.env:
        if key in FORBIDDEN_ENV_KEYS or key.startswith(FORBIDDEN_ENV_PREFIXES):
            raise SandboxError(f"environment variable {key!r} may not be set by a job")
    base = {"PATH": BASE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "SANDRUN_JOB_ID": job.id}
    return {**base, **(extra or {}), **job.env}


def write_files(job: Job, root: Path) -> None:
    """Write the job's files under ``root``; refuse any path that would leave it."""
    for rel, item in job.files.items():
        target = root / rel
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        if not parent.resolve().is_relative_to(root.resolve()):
            raise SandboxError(f"file {rel!r} would be written outside the job directory")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(target, flags, 0o755 if item.executable else 0o644)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise SandboxError(f"file {rel!r} clashes with another file of the job") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(item.data())


def command(job: Job, root: Path, interpreters: frozenset[str],
            search_path: str = BASE_PATH) -> list[str]:
    """argv for the job: the interpreter (found on ``search_path``, the base PATH or an
    environment's ``bin`` before it) and its script."""
    interpreter = job.interpreter or "python3"
    if interpreter not in interpreters:
        allowed = ", ".join(sorted(interpreters))
        raise SandboxError(f"interpreter {interpreter!r} is not allowed on this worker "
                           f"(allowed: {allowed})")
    path = shutil.which(interpreter, path=search_path)
    if path is None:
        raise SandboxError(f"interpreter {interpreter!r} is not installed on this worker")
    if job.code is not None:
        script = f"__sandrun_main__{SCRIPT_SUFFIX.get(interpreter, '')}"
        (root / script).write_text(job.code, encoding="utf-8")
    else:
        script = str(job.entrypoint)
    return [path, script, *job.args]
