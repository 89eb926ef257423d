"""Requirement layers: a job's ``requirements`` installed once, by the worker, from wheels.

Why the worker installs and the job never does: the job has no network, and pip
run by the job could be steered. The worker runs ``pip install --no-index
--find-links <SANDRUN_WHEEL_CACHE> --only-binary :all: --no-build-isolation
--target <layer>`` with a minimal environment and ``--isolated`` (no pip config
or ``PIP_*`` variable is read): no index and no network is ever asked, and only
wheels are accepted, so no ``setup.py`` from the cache runs. Requirements were
checked when the job was built (:mod:`worker.models.requirements`): names and
specifiers only.

Each layer is a directory named by :func:`~worker.models.requirements.requirement_key`
(the normalized set and the Python ``X.Y``) under ``SANDRUN_LAYERS_DIR``. It is
built in a temporary sibling and renamed into place, so a job never sees half a
layer and two workers building one set at once both end with a whole one (the
loser's copy is dropped). The next job with the same set finds it and starts at
once. The executor binds it read-only into the job's view and puts it on
``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import structlog

from worker.models.requirements import requirement_key
from worker.sandbox.prepare import BASE_PATH, EnvironmentUnavailable

PIP_TIMEOUT_SECONDS = 300
LAYERS_DIR = "sandrun-layers"
log = structlog.get_logger("sandrun.sandbox")

#: pip's words for a requirement it could not satisfy from the wheel cache.
MISSING = (re.compile(r"No matching distribution found for (\S+)"),
           re.compile(r"Could not find a version that satisfies the requirement (\S+)"))


def layers_root(layers_dir: str | None) -> Path:
    """Where layers live: ``SANDRUN_LAYERS_DIR`` or ``<system tmp>/sandrun-layers``, 0711
    (job users reach the layer they are given by name, and list none)."""
    root = Path(layers_dir) if layers_dir else Path(tempfile.gettempdir()) / LAYERS_DIR
    with contextlib.suppress(FileExistsError):
        os.makedirs(root, 0o711)
    if root.is_symlink() or root.stat().st_uid != os.geteuid():
        raise EnvironmentUnavailable(f"{root} is a link or another user's directory; remove "
                                     "it or set SANDRUN_LAYERS_DIR to one only the worker "
                                     "controls")
    os.chmod(root, 0o711)
    return root


def pip_command(requirements: tuple[str, ...], wheel_cache: str, target: str,
                python: str) -> list[str]:
    """The worker's pip, installing ``requirements`` from ``wheel_cache`` into ``target``
    for Python ``python`` (``X.Y``), never from an index."""
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index",
           "--find-links", wheel_cache, "--only-binary", ":all:", "--no-build-isolation",
           "--no-cache-dir", "--disable-pip-version-check", "--no-input",
           "--no-warn-script-location", "--target", target]
    if python != f"{sys.version_info[0]}.{sys.version_info[1]}":
        cmd += ["--python-version", python]
    return [*cmd, "--", *requirements]


def missing_names(stderr: str) -> list[str]:
    """The requirements pip said the cache cannot satisfy, in the order it named them."""
    names: list[str] = []
    for pattern in MISSING:
        for found in pattern.findall(stderr):
            if found not in names:
                names.append(found)
    return names


def _readable(root: Path) -> None:
    """Let job users read the layer (and run what pip marked executable), never write it."""
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        os.chmod(path, 0o755 if path.is_dir() or mode & 0o100 else 0o644)


def _build(requirements: tuple[str, ...], wheel_cache: str, final: Path, python: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name[:16]}-", dir=final.parent))
    try:
        cmd = pip_command(requirements, wheel_cache, str(tmp), python)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS,
                              env={"PATH": BASE_PATH, "HOME": str(tmp), "LANG": "C.UTF-8"},
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            missing = missing_names(done.stderr)
            if missing:
                raise EnvironmentUnavailable(
                    f"the worker's wheel cache cannot satisfy: {', '.join(missing)}; ask the "
                    "operator to add the wheels to SANDRUN_WHEEL_CACHE, or drop them")
            last = done.stderr.strip().splitlines()[-3:]
            raise EnvironmentUnavailable("installing the requirements from the wheel cache "
                                         f"failed: {' / '.join(last) or done.returncode}")
        _readable(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its copy first: use that one
            if not final.is_dir():
                raise
    except subprocess.TimeoutExpired:
        raise EnvironmentUnavailable(f"installing the requirements took over "
                                     f"{PIP_TIMEOUT_SECONDS}s; the wheel cache may be on a "
                                     "slow or hung filesystem") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def layer_for(requirements: tuple[str, ...], *, wheel_cache: str | None,
              layers_dir: str | None, python: str) -> str:
    """The layer holding ``requirements`` for Python ``python``: reused when a job built it
    before, else built now. Raises EnvironmentUnavailable."""
    if not wheel_cache:
        raise EnvironmentUnavailable("the job has requirements, but this worker installs none "
                                     "(SANDRUN_WHEEL_CACHE is not set); drop 'requirements' "
                                     "or use a prepared environment")
    if not os.path.isdir(wheel_cache):
        raise EnvironmentUnavailable(f"the wheel cache {wheel_cache} (SANDRUN_WHEEL_CACHE) is "
                                     "not a directory on this worker")
    final = layers_root(layers_dir) / requirement_key(requirements, python)
    if final.is_dir():
        return str(final)
    try:
        _build(requirements, wheel_cache, final, python)
    except OSError as exc:
        raise EnvironmentUnavailable(f"cannot build the requirement layer: {exc}") from None
    log.info("requirement_layer_built", requirements=len(requirements), python=python)
    return str(final)
