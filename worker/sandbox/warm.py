"""A warm launch path: the next job's sandbox is built before the job arrives.

Why: building a view costs bubblewrap several milliseconds per job (a user, PID,
mount and network namespace, ``/proc``, ``/dev``), and forking the 60 MB pool
process another one or two, all before the job's own interpreter starts. None of
it depends on the job. So after each job a pool process **pre-starts** the next
one: it forks a launcher, which starts bwrap with ``--block-fd``; bwrap builds the
whole view (namespaces, mounts, seccomp, rlimits, the slot's uid, an empty job
directory bound in it) and blocks just before exec. When a job comes, the pool
process writes its files into that directory, sends the launcher the job's
timeout (the *go* line), and the launcher unblocks bwrap, which execs ``/bin/sh
-s``: the shell reads one line the pool process writes (the job's CPU and memory
rlimits, then ``exec /usr/bin/env -i <the job's env> <argv> </dev/null``), so the
job runs with exactly the environment, argv, limits and progress descriptor
(``SANDRUN_PROGRESS_FD``, a pipe made at pre-start) a cold launch gives it,
in a view built from the same arguments. A job then costs a shell and ``env``
(about a millisecond) plus its own interpreter start.

For Python code jobs the view holds more: the job's interpreter itself, started at
pre-start and waiting in a hook for the job's rlimits and env
(:mod:`worker.sandbox.warmpython`), so such a job costs neither the shell nor its
interpreter's start. Which kind is pre-started follows the last job (jobs come in
kinds); a job a pre-started interpreter cannot run as a cold start would discards it
and launches cold, and the next box is a shell.

A warm sandbox serves one job only and is never reused: what a job leaves in its
namespaces dies with them. One that died meanwhile (killed, the host's OOM
killer) is noticed before use and replaced by a cold launch, so no job is lost.
Jobs a warm sandbox was not built for (network, GPU devices, another config)
launch cold.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from worker.sandbox.capture import collect, output_pipe
from worker.sandbox.launcher import LaunchReport, LaunchSpec, launch
from worker.sandbox.live import Tee
from worker.sandbox.reaping import release
from worker.sandbox.warmpython import WarmPython, remove

SHELL = "/bin/sh"
ENV = "/usr/bin/env"


@dataclass(slots=True)
class Warm:
    """A sandbox built for the next job: its launcher and the pool process's pipe ends."""

    key: tuple[object, object]  # (config, plan) it was built for; other jobs launch cold
    workdir: Path
    pid: int  # the launcher
    report_fd: int
    control_w: int
    script_w: int
    out_r: int
    err_r: int
    progress_r: int
    progress_fd: int  # the number of the progress pipe's write end in the job
    used: bool = False  # a job went through it (it is never used twice)
    #: A pre-started interpreter (:mod:`worker.sandbox.warmpython`) in place of the shell.
    python: WarmPython | None = None

    def alive(self) -> bool:
        """Whether the launcher still waits for its job (it has not exited or reported)."""
        try:
            if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                return False
        except ChildProcessError:
            return False
        return not select.select([self.report_fd], [], [], 0)[0]

    def discard(self, *, wait: bool = False) -> None:
        """Tell the launcher no job comes (it kills its tree) and close our ends; with
        ``wait``, until it has exited (before its cgroup is removed). A pre-started
        interpreter's hook is removed, so the directory may serve a cold launch."""
        for fd in (self.control_w, self.script_w, self.out_r, self.err_r, self.progress_r,
                   self.report_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        release(self.pid, wait=wait)
        if self.python is not None:
            remove(self.workdir, self.python)

    def run(self, script: bytes, timeout: float, cap: int, tee: Tee | None = None
            ) -> tuple[LaunchReport, str, bool, str, bool]:
        """Let the job go with ``script`` (the shell's line, or the pre-started
        interpreter's :func:`~worker.sandbox.warmpython.message`, whose env names
        :attr:`progress_fd` as ``SANDRUN_PROGRESS_FD``) and capture it as
        :func:`capture.execute` does."""
        self.used = True
        os.write(self.control_w, json.dumps({"timeout": timeout}).encode() + b"\n")
        os.close(self.control_w)
        view = memoryview(script)
        while view:  # the shell reads it now; a long env may exceed the pipe's buffer
            view = view[os.write(self.script_w, view):]
        os.close(self.script_w)
        return collect(self.pid, (self.report_fd, self.out_r, self.err_r, self.progress_r),
                       timeout, cap, tee)


def script(argv: Sequence[str], env: dict[str, str], cpu_seconds: int,
           memory: tuple[str, int] | None) -> bytes:
    """The one line the warm shell runs: the job's rlimits, then exec its command with
    exactly ``env`` (``env -i``) and stdin from /dev/null. Every value is single-quoted,
    so nothing in it is interpreted by the shell."""
    limits = [f"ulimit -S -t {cpu_seconds}", f"ulimit -H -t {cpu_seconds + 1}"]
    if memory is not None:
        kind, size = memory
        limits.append(f"ulimit -{'v' if kind == 'as' else 'd'} {max(1, size // 1024)}")
    words = [ENV, "-i", "--", *(f"{k}={v}" for k, v in env.items()), *argv]
    command = "exec " + " ".join(shlex.quote(word) for word in words) + " </dev/null"
    return (" && ".join([*limits, command]) + "\n").encode()


def prestart(key: tuple[object, object], workdir: Path, spec: LaunchSpec,
             python: WarmPython | None = None) -> Warm:
    """Fork the launcher of a warm sandbox: ``spec.argv`` is bwrap's command for
    ``[SHELL, "-s"]`` without ``--block-fd`` (added here), its descriptors in
    ``spec.pass_fds``; the caller closes those after this returns. With ``python``,
    ``spec.argv`` runs that pre-started interpreter instead, which bwrap starts at once
    (no ``--block-fd``: it waits for the job itself)."""
    block_r, block_w = os.pipe()
    control_r, control_w = os.pipe()
    script_r, script_w = os.pipe()
    out_r, out_w = output_pipe()
    err_r, err_w = output_pipe()
    progress_r, progress_w = os.pipe()
    blocked = python is None
    argv = [spec.argv[0], *(["--block-fd", str(block_r)] if blocked else []), *spec.argv[1:]]
    warm_spec = replace(spec, argv=argv, stdout_fd=out_w, stderr_fd=err_w,
                        pass_fds=(*spec.pass_fds, *([block_r] if blocked else []), progress_w),
                        stdin_fd=script_r, control_fd=control_r,
                        block_fd=block_w if blocked else -1,
                        close_in_launcher=(control_w, script_w, out_r, err_r, progress_r))
    try:
        pid, report_fd = launch(warm_spec)
    except BaseException:
        for fd in (control_w, script_w, out_r, err_r, progress_r):
            os.close(fd)
        raise
    finally:
        for fd in (block_r, block_w, control_r, script_r, out_w, err_w, progress_w):
            os.close(fd)
    return Warm(key, workdir, pid, report_fd, control_w, script_w, out_r, err_r, progress_r,
                progress_w, python=python)
