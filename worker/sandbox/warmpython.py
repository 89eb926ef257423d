"""A pre-started interpreter in the warm view, for Python code jobs.

Why: once the view is pre-started (:mod:`worker.sandbox.warm`), the job's own interpreter
start (11-12 ms for ``python3`` here) is most of a ``print(1)`` job's round trip. None of
that start depends on the job when the job's start-up inputs (interpreter, script name,
arguments, the environment variables Python and the C library read as they start) are
those a pre-start can know. So for such jobs the warm view runs the interpreter itself.

How: the pre-start runs ``python3 __sandrun_main__.py`` in the view, with the
environment a code job without ``env`` gets (less its id), after placing a
``usercustomize`` module in the user site directory under ``HOME``, which is the job's
directory. Python starts as it would for the job (``site``, ``sitecustomize``) and
imports that module last; the module (:data:`HOOK`) blocks reading its stdin. When the
job comes, the pool process writes its code to ``__sandrun_main__.py`` and sends one
message (:func:`message`): the CPU and memory rlimits, then the job's whole environment.
The hook sets the rlimits as the warm shell's ``ulimit`` does, replaces the environment
(``os.environ`` and the C library's), puts ``/dev/null`` on stdin, removes its own files
and the user site directory from ``sys.path``, repeats the look-up a cold start's failed
``import usercustomize`` makes (so the import caches hold the same entries), and ends its
import as that failed import ends: the interpreter then runs the job's script as its
main module, exactly as a cold launch does (same frames, tracebacks, exit status).

What a job can still tell apart: ``/proc/self/environ`` shows the environment the
interpreter started with (the base one), not the job's; everything the job's code
reads through Python (``os.environ``, ``sys.argv``, ``sys.path``, ``sys.modules``,
rlimits, descriptors) is the same, and ``tests/worker/sandbox/test_warm.py`` compares it.

When not (:func:`fits`): a job with an entrypoint or arguments (``/proc/self/cmdline``
would differ), another interpreter or path, a file under ``.local`` (a cold start would
read it), or an environment that differs from the pre-start's in anything read as a
process starts (``PYTHON*``, locale, ``HOME``, ``PATH``, ``TZ``, the C library's
``LD_*``/``GLIBC_*``/``MALLOC_*``) launches through the warm shell or cold.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from worker.models import Job
from worker.sandbox.prepare import BASE_PATH, SCRIPT_SUFFIX, job_environment

PYTHONS = frozenset({"python3", "python"})
SCRIPT = f"__sandrun_main__{SCRIPT_SUFFIX['python3']}"
#: Environment variables read as a process starts (by Python or the C library): a job
#: whose values differ from the pre-start's launches another way.
STARTUP_PREFIXES = ("PYTHON", "LC_", "LD_", "GLIBC_", "MALLOC_")
STARTUP_KEYS = frozenset({"LANG", "LANGUAGE", "HOME", "PATH", "TZ", "TZDIR", "LOCPATH",
                          "NLSPATH", "GCONV_PATH", "TMPDIR", "TERM"})

HOOK = '''\
# Sandrun's pre-started interpreter (worker/sandbox/warmpython.py): waits for its job, then
# leaves as a cold start's failed `import usercustomize` leaves.
def _sandrun_wait(path):
    import os, sys
    chunks = []
    while chunk := os.read(0, 65536):
        chunks.append(chunk)
    fields = b"".join(chunks).split(b"\\0")
    if fields[0] != b"go":
        os._exit(75)
    cpu, kind, size = int(fields[1]), fields[2], int(fields[3] or 0)
    import resource
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    if kind:
        which = resource.RLIMIT_AS if kind == b"as" else resource.RLIMIT_DATA
        resource.setrlimit(which, (size, size))
    del sys.modules["resource"]
    home, pwd = os.environ["HOME"], os.environb.get(b"PWD")
    os.environ.clear()
    for item in fields[4:]:
        key, _, value = item.partition(b"=")
        os.environb[key] = value
    if pwd is not None:  # bwrap sets it after --chdir, for a cold start too
        os.environb[b"PWD"] = pwd
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    site_dir = os.path.dirname(path)
    os.unlink(path)
    folder = site_dir
    while folder != home:
        os.rmdir(folder)
        folder = os.path.dirname(folder)
    sys.path.remove(site_dir)
    sys.path_importer_cache.pop(site_dir, None)
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is not None:
            find("usercustomize", None)


try:
    _sandrun_wait(__file__)
except BaseException as exc:  # never run the job without its limits and env
    import os
    os.write(2, f"sandrun: the pre-started interpreter could not take its job: {exc!r}\\n"
             .encode(errors="replace"))
    os._exit(70)
del _sandrun_wait
raise ModuleNotFoundError("No module named 'usercustomize'", name="usercustomize")
'''
compile(HOOK, "usercustomize.py", "exec")  # a hook that cannot run would leave jobs unlimited


@dataclass(frozen=True, slots=True)
class WarmPython:
    """The interpreter a warm view pre-started: its path, the environment it started
    with, and the hook file placed for it."""

    interpreter: str
    startup_env: dict[str, str]
    hook: Path


@functools.cache
def _user_site(interpreter: str) -> str:
    """The user site directory of ``interpreter`` relative to ``HOME`` (asked once)."""
    home = "/sandrun-home"
    done = subprocess.run([interpreter, "-c", "import site; print(site.getusersitepackages())"],
                          env={"HOME": home, "PATH": BASE_PATH}, capture_output=True,
                          text=True, check=True, timeout=30)
    return str(PurePosixPath(done.stdout.strip()).relative_to(home))


_PLAIN = Job(code="pass")  # a code job without env: what the start-up environment is of


def startup_env(root: Path) -> dict[str, str]:
    """The environment the pre-started interpreter starts with: a code job's, less its id."""
    base = job_environment(_PLAIN, str(root))
    return {key: value for key, value in base.items() if key != "SANDRUN_JOB_ID"}


def place(root: Path, interpreter: str) -> WarmPython:
    """Write the hook into ``root``'s user site directory (before :func:`hand_over`
    gives the directory to the job user, who removes it)."""
    site_dir = root / _user_site(interpreter)
    site_dir.mkdir(parents=True)
    hook = site_dir / "usercustomize.py"
    hook.write_text(HOOK, encoding="utf-8")
    return WarmPython(interpreter, startup_env(root), hook)


def remove(root: Path, warm: WarmPython) -> None:
    """Remove what :func:`place` wrote (a pre-started interpreter that got no job), so a
    cold launch in the same directory does not import it."""
    with contextlib.suppress(FileNotFoundError):
        warm.hook.unlink()
    folder = warm.hook.parent
    while folder != root and folder.is_relative_to(root):
        with contextlib.suppress(FileNotFoundError, OSError):
            folder.rmdir()
        folder = folder.parent


def startup_read(key: str) -> bool:
    """Whether a process reads the variable ``key`` as it starts."""
    return key in STARTUP_KEYS or key.startswith(STARTUP_PREFIXES)


def eligible(job: Job) -> bool:
    """Whether ``job`` is of the kind a pre-started interpreter can run (inline code for
    ``python3``/``python``, no arguments, no file under ``.local``), whatever its env."""
    return (job.code is not None and not job.args and (job.interpreter or "python3") in PYTHONS
            and not any(".local" in PurePosixPath(path).parts for path in job.files))


def fits(job: Job, interpreter: str | None, env: dict[str, str], warm: WarmPython) -> bool:
    """Whether the pre-started interpreter ``warm`` runs ``job`` (``interpreter``: the
    path the job's interpreter resolves to; ``env``: its whole environment) as a cold
    start would: see the module docstring."""
    if not eligible(job) or interpreter != warm.interpreter:
        return False
    if any("\0" in key or "\0" in value for key, value in env.items()):
        return False  # a cold exec refuses it; so must this
    keys = {key for key in (*env, *warm.startup_env) if startup_read(key)}
    return all(env.get(key) == warm.startup_env.get(key) for key in keys)


def message(env: dict[str, str], cpu_seconds: int, memory: tuple[str, int] | None) -> bytes:
    """What the hook reads: the rlimits the warm shell's ``ulimit`` line would set (memory
    rounded down to KiB as ``ulimit`` does), then every ``KEY=value`` of the job's env."""
    kind, size = memory if memory is not None else ("", 0)
    size = max(1, size // 1024) * 1024 if memory is not None else 0
    fields = [b"go", str(cpu_seconds).encode(), kind.encode(), str(size).encode()]
    fields += [os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()]
    return b"\0".join(fields)


def interpreter_for(job: Job, root: Path, env: dict[str, str], *, search_path: str,
                    allowed: frozenset[str]) -> str | None:
    """The path of the interpreter a pre-started one in ``root`` would be for ``job``
    (``env``: its whole environment, ``search_path`` where its interpreter is looked
    up), or None when ``job`` is not one :func:`fits` such an interpreter."""
    if not eligible(job):
        return None
    interpreter = job.interpreter or "python3"
    path = shutil.which(interpreter, path=search_path)
    if path is None or interpreter not in allowed:
        return None
    started = WarmPython(path, startup_env(root), root)
    return path if fits(job, path, env, started) else None
