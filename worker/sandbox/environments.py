"""Named environments and requirement layers: what a job's interpreter and imports are.

Why operator-prepared: building a virtualenv runs code (setup.py, post-install
steps) and may need the network, so it is the operator's job, done once, outside
any sandbox. ``SANDRUN_ENVIRONMENTS_DIR`` holds one directory per environment (a
virtualenv, or an interpreter prefix such as ``/opt/python3.12``, or a link to
one), named by the directory; its ``bin/python3`` (or ``bin/python``) runs the
jobs that ask for it by name. The prefix is bound read-only into the job's view
at its own path (a virtualenv's files name absolute paths), with the prefix of
the interpreter it was made from when that lies outside ``/usr``.

:func:`job_setup` is the executor's one call: it resolves the job's
``environment`` and builds or reuses its requirement layer
(:mod:`worker.sandbox.layers`), and raises :class:`EnvironmentUnavailable`,
which ends the job ``environment_error`` without running it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from worker.models import Job
from worker.sandbox.layers import layer_for
from worker.sandbox.prepare import BASE_PATH, EnvironmentUnavailable

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INTERPRETER_NAMES = ("python3", "python")
MIN_PREFIX_PARTS = 3  # "/", "opt", "python3.12"
VERSION_TIMEOUT_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Environment:
    """One prepared environment: its name, prefix, interpreter and Python ``X.Y``."""

    name: str
    prefix: str
    interpreter: str
    python_version: str | None  # None: the interpreter does not run


@dataclass(frozen=True, slots=True)
class Setup:
    """What a job's environment and requirements add to its launch."""

    search_path: str = BASE_PATH  # where its interpreter is looked up (and PATH)
    binds: tuple[str, ...] = ()  # host paths bound read-only at the same path
    pythonpath: str | None = None  # the requirement layer

    def apply(self, env: dict[str, str], job: Job) -> dict[str, str]:
        """``env`` with the environment's ``bin`` on PATH (unless the job set PATH) and the
        layer first on PYTHONPATH (before the job's own entries)."""
        out = dict(env)
        if "PATH" not in job.env:
            out["PATH"] = self.search_path
        if self.pythonpath is not None:
            own = job.env.get("PYTHONPATH")
            out["PYTHONPATH"] = f"{self.pythonpath}:{own}" if own else self.pythonpath
        return out


@functools.cache
def python_version(interpreter: str) -> str | None:
    """``X.Y`` of ``interpreter`` (run once per path and process), None if it fails."""
    try:
        done = subprocess.run([interpreter, "-c", "import sys; print('%d.%d' % "
                               "sys.version_info[:2])"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_SECONDS, env={"PATH": BASE_PATH},
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and re.fullmatch(r"\d+\.\d+", out) else None


def _interpreter(prefix: Path) -> Path | None:
    for name in INTERPRETER_NAMES:
        candidate = prefix / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def list_environments(root: str | None) -> list[Environment]:
    """Every environment under ``root`` (sorted by name): subdirectories with a
    ``bin/python3`` or ``bin/python``; anything else is skipped."""
    if not root or not os.path.isdir(root):
        return []
    found = []
    for entry in sorted(Path(root).iterdir()):
        prefix = entry.resolve()
        interpreter = _interpreter(prefix) if NAME.match(entry.name) else None
        if interpreter is not None:
            found.append(Environment(entry.name, str(prefix), str(interpreter),
                                     python_version(str(interpreter))))
    return found


def find_environment(root: str | None, name: str) -> Environment:
    """The environment ``name`` under ``root``, or EnvironmentUnavailable naming those
    there are."""
    if not root:
        raise EnvironmentUnavailable(
            f"the job asks for environment {name!r}, but this worker has no environments "
            "(SANDRUN_ENVIRONMENTS_DIR is not set); drop 'environment' or ask the operator "
            "to prepare one")
    known = {env.name: env for env in list_environments(root)}
    if name not in known:
        have = ", ".join(sorted(known)) or "none"
        raise EnvironmentUnavailable(f"unknown environment {name!r}; this worker has: {have} "
                                     "(sandrun environments lists them)")
    if known[name].python_version is None:
        raise EnvironmentUnavailable(f"environment {name!r}: its interpreter "
                                     f"{known[name].interpreter} does not run on this worker")
    return known[name]


def _binds(env: Environment) -> tuple[str, ...]:
    """The prefix and the base interpreter's prefix, leaving out what /usr already shows.

    A prefix fewer than two levels deep (``/``, ``/opt``) is refused: binding it would
    show the job far more of the host than one interpreter."""
    if len(Path(env.prefix).parts) < MIN_PREFIX_PARTS:
        raise EnvironmentUnavailable(f"environment {env.name!r} resolves to {env.prefix}; a "
                                     "prefix must be at least two levels deep, such as "
                                     "/opt/python3.12")
    base = Path(os.path.realpath(env.interpreter)).parent.parent  # a virtualenv's Python
    out: list[str] = []
    for path in (Path(env.prefix), base):
        deep = len(path.parts) >= MIN_PREFIX_PARTS
        if deep and path.parts[1] != "usr" and str(path) not in out:
            out.append(str(path))
    return tuple(out)


def needs_setup(job: Job) -> bool:
    """True when the job asks for an environment or requirements (its view is its own:
    no warm sandbox serves it)."""
    return job.environment is not None or bool(job.requirements)


def job_setup(job: Job, *, environments_dir: str | None, wheel_cache: str | None,
              layers_dir: str | None) -> Setup:
    """The job's environment and requirement layer (built now if no job built it before,
    for the Python version of the interpreter that will run the job).

    Raises EnvironmentUnavailable."""
    search = BASE_PATH
    binds: tuple[str, ...] = ()
    if job.environment is not None:
        env = find_environment(environments_dir, job.environment)
        search, binds = f"{env.prefix}/bin:{BASE_PATH}", _binds(env)
    requirements = job.requirement_set()
    if not requirements:
        return Setup(search, binds)
    interpreter = job.interpreter or "python3"
    if interpreter not in INTERPRETER_NAMES:  # checked before anything is run for it
        raise EnvironmentUnavailable(f"the job has requirements, which are Python packages, "
                                     f"but runs {interpreter!r}; use python3 or drop them")
    target = shutil.which(interpreter, path=search)
    version = python_version(target) if target else None
    if version is None:
        raise EnvironmentUnavailable(f"the job has requirements, but its interpreter "
                                     f"{interpreter!r} is not a Python that runs here")
    layer = layer_for(requirements, wheel_cache=wheel_cache, layers_dir=layers_dir,
                      python=version)
    return Setup(search, (*binds, layer), layer)
