"""The launcher: a forked process that owns one job's process tree.

Why a separate process: a job may fork, call ``setsid`` and leave grandchildren
behind, which a process-group kill misses. The launcher is forked from the
worker pool process (no new interpreter, so it costs about a millisecond),
marks itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``) so every
orphaned descendant of the job is re-parented to it, starts the job in a new
session with its resource limits, and when the job ends or its wall-clock
timeout passes, kills every remaining descendant and reaps them all. If the
pool process dies, the launcher gets SIGTERM (``PR_SET_PDEATHSIG``) and does
the same before exiting. It reports the outcome as one JSON line on a pipe.

The job process is confined (``worker.sandbox.confine``: job user, user namespace and
process limit, Landlock, network namespace) and limited (``setrlimit``) between
fork and exec. The launcher itself is not dumpable, so a job running as the
same user cannot read its memory (a copy of the worker's) or its environment.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from worker.sandbox.confine import PR_SET_DUMPABLE, Confinement, enter, prctl
from worker.sandbox.reaping import PR_SET_CHILD_SUBREAPER, reap_finished_launchers

PR_SET_PDEATHSIG = 1
SAMPLE_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits applied in the job process before it execs."""

    memory_bytes: int | None
    memory_kind: str  # "as" (address space) or "data"
    cpu_seconds: int
    file_size_bytes: int
    open_files: int


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to run, where, with which limits; stdout/stderr are write ends of pipes."""

    argv: Sequence[str]
    cwd: str
    env: dict[str, str]
    limits: Limits
    stdout_fd: int
    stderr_fd: int
    timeout: float
    confinement: Confinement
    pass_fds: tuple[int, ...] = ()  # descriptors the job's command reads (bwrap's data, seccomp)
    #: argv is bubblewrap: what the job leaves running dies with its PID namespace when its
    #: main process ends, and bwrap's own pid 1, still exiting then, is not the job's stray.
    wrapped: bool = False
    #: A warm launch (:mod:`worker.sandbox.warm`): the job's stdin (the script the shell
    #: or pre-started interpreter reads), the pipe the go line arrives on, and the write
    #: end of bwrap's --block-fd (-1: bwrap runs a pre-started interpreter at once).
    stdin_fd: int | None = None
    control_fd: int = -1
    block_fd: int = -1
    close_in_launcher: tuple[int, ...] = ()  # the pool process's ends of those pipes


@dataclass(slots=True)
class LaunchReport:
    """What the launcher saw: exit status, limits hit, usage of the whole tree."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cpu_seconds: float = 0.0
    max_rss_bytes: int = 0
    wall_seconds: float = 0.0
    strays: int = 0  # descendants still alive when the job ended, killed by the launcher
    error: str | None = None


SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the process that starts it dies
    (util-linux ``setpriv --pdeathsig``; unchanged where setpriv is missing). Used for
    helper processes (private redis-servers, demo workers) that must not outlive
    their starter even when it is killed."""
    return [SETPRIV, "--pdeathsig", "TERM", "--", *argv] if SETPRIV else list(argv)


def _set_limits(limits: Limits) -> None:
    """The job's rlimits; memory last, since it may leave too little to run Python."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.memory_bytes is not None:
        kind = resource.RLIMIT_AS if limits.memory_kind == "as" else resource.RLIMIT_DATA
        resource.setrlimit(kind, (limits.memory_bytes, limits.memory_bytes))


def _preexec(spec: LaunchSpec, why_fd: int) -> Callable[[], None]:
    """Confine and limit the job process; on failure write the reason to ``why_fd``."""
    def preexec() -> None:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            enter(spec.confinement)
            _set_limits(spec.limits)
        except BaseException as exc:
            os.write(why_fd, (str(exc) or type(exc).__name__).encode()[:4000])
            raise

    return preexec


def _children() -> list[int]:
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


class _Tree:
    """Reaps and kills the launcher's descendants, adding up their usage."""

    def __init__(self, report: LaunchReport) -> None:
        self.report = report

    def account(self, usage: resource.struct_rusage) -> None:
        self.report.cpu_seconds += usage.ru_utime + usage.ru_stime
        self.report.max_rss_bytes = max(self.report.max_rss_bytes, usage.ru_maxrss * 1024)

    def reap(self, block: bool) -> bool:
        """Reap one child; False when there are none left."""
        try:
            pid, _, usage = os.wait4(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return False
        if pid:
            self.account(usage)
        return True

    def kill_all(self) -> None:
        """SIGKILL every descendant until none is left (orphans come to us as they appear),
        counting them as strays."""
        while True:
            for pid in _children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not self.reap(block=True):
                return
            self.report.strays += 1


def _peak_rss(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _wait_main(pid: int, deadline: float, sample: bool = True) -> tuple[bool, int]:
    """Wait for the job's main process until ``deadline``, sampling its peak RSS.

    Returns whether it exited in time and the highest VmHWM seen. The sample is
    taken from the process itself because ``ru_maxrss`` would also count the
    memory of the forked interpreter before ``exec``. Samples start 1 ms apart and
    slow down to SAMPLE_SECONDS, so that a job of a few milliseconds is seen too.
    Without ``sample`` (bwrap: its own VmHWM is not the job's, whose peak the memory
    cgroup gives) it only waits, so the launcher takes no CPU from the job meanwhile.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    peak, interval = _peak_rss(pid) if sample else 0, 0.001
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, peak
            if not sample and fd >= 0:
                interval = remaining
            wait, interval = min(remaining, interval), min(interval * 2, SAMPLE_SECONDS)
            if fd >= 0:
                if select.select([fd], [], [], wait)[0]:
                    return True, peak
            elif os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return True, peak
            else:
                time.sleep(wait)
            if sample:
                peak = max(peak, _peak_rss(pid))
    finally:
        if fd >= 0:
            os.close(fd)


def _start(spec: LaunchSpec, report: LaunchReport) -> subprocess.Popen[bytes] | None:
    """Start the confined job; None (and ``report.error`` saying why) if it cannot start."""
    why_r, why_w = os.pipe()
    try:
        # The launcher is a freshly forked, single-threaded process: preexec_fn is safe here.
        return subprocess.Popen(
            spec.argv, cwd=spec.cwd, env=spec.env,
            stdin=subprocess.DEVNULL if spec.stdin_fd is None else spec.stdin_fd,
            stdout=spec.stdout_fd, stderr=spec.stderr_fd, start_new_session=True,
            preexec_fn=_preexec(spec, why_w), close_fds=True,  # noqa: PLW1509
            pass_fds=spec.pass_fds)
    except subprocess.SubprocessError:
        os.close(why_w)
        why_w = -1
        why = os.read(why_r, 4096).decode(errors="replace")
        report.error = f"cannot confine the job: {why or 'unknown error'}"
    except OSError as exc:
        report.error = f"cannot start {spec.argv[0]}: {exc.strerror or exc}"
    finally:
        os.close(why_r)
        if why_w >= 0:
            os.close(why_w)
    return None


def _await_go(control_fd: int, child: int) -> float | None:
    """The job's timeout from the go line, or None when the pool process closed the
    control pipe without one (the warm sandbox is discarded) or the view's process
    ``child`` died first (killed, the host's OOM killer): the launcher then reports, so
    the pool process sees the warm sandbox is gone and launches its job cold."""
    try:
        died = os.pidfd_open(child)
    except OSError:
        died = -1
    line = b""
    try:
        while not line.endswith(b"\n"):
            if died >= 0 and control_fd not in select.select([control_fd, died], [], [])[0]:
                return None
            chunk = os.read(control_fd, 64)
            if not chunk:
                return None
            line += chunk
    finally:
        if died >= 0:
            os.close(died)
    return float(json.loads(line)["timeout"])


def _become_launcher(tree: _Tree) -> None:
    """Own the job's tree: a subreaper that kills it when the pool process dies."""
    parent = os.getppid()

    def on_parent_death(signum: int, frame: object) -> None:
        tree.kill_all()
        os._exit(137)

    signal.signal(signal.SIGTERM, on_parent_death)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(137)
    prctl(PR_SET_DUMPABLE, 0)


def _let_go(spec: LaunchSpec, child: int) -> float | None:
    """Warm: the view is built; wait for the job's go line, then unblock bwrap (unless
    it runs a pre-started interpreter, which waits for its job itself). Returns the
    job's timeout, or None when no job comes."""
    if spec.stdin_fd is not None:
        os.close(spec.stdin_fd)
    timeout = _await_go(spec.control_fd, child)
    if timeout is not None and spec.block_fd >= 0:
        os.write(spec.block_fd, b"g")
    return timeout


def _run(spec: LaunchSpec, report: LaunchReport) -> None:
    tree = _Tree(report)
    _become_launcher(tree)
    started = time.monotonic()
    proc = _start(spec, report)
    # The job holds its own copies: the pool process then sees its output end as the job's
    # processes end, while this one still reaps them, not after the report.
    os.close(spec.stdout_fd)
    os.close(spec.stderr_fd)
    if proc is None:
        return
    timeout = spec.timeout
    if spec.control_fd >= 0:
        go = _let_go(spec, proc.pid)
        if go is None:
            report.error = "the warm sandbox was abandoned before a job came"
            tree.kill_all()
            return
        timeout, started = go, time.monotonic()
    finished, main_peak = _wait_main(proc.pid, started + timeout, sample=not spec.wrapped)
    if not finished:
        report.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    report.wall_seconds = time.monotonic() - started
    report.cpu_seconds += usage.ru_utime + usage.ru_stime
    report.max_rss_bytes = max(report.max_rss_bytes, main_peak)
    if os.WIFSIGNALED(status):
        report.signal = os.WTERMSIG(status)
    else:
        report.exit_code = os.WEXITSTATUS(status)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    tree.kill_all()
    if spec.wrapped:
        report.strays = 0


def launch(spec: LaunchSpec) -> tuple[int, int]:
    """Fork the launcher; return its pid and the read end of its report pipe."""
    reap_finished_launchers()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the launcher
        code = 0
        try:
            gc.disable()  # a collection would touch, and so copy, the whole inherited heap
            os.close(report_r)
            for fd in spec.close_in_launcher:
                os.close(fd)
            report = LaunchReport()
            try:
                _run(spec, report)
            except Exception as exc:
                report.error = f"launcher failed: {type(exc).__name__}: {exc}"
            os.write(report_w, json.dumps(asdict(report)).encode())
            # Close before exiting: the kernel tears down the address space before it
            # closes descriptors, and the worker should not wait for that to see EOF.
            os.close(report_w)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(report_w)
    return pid, report_r


def parse_report(raw: bytes) -> LaunchReport:
    """Decode the launcher's report; a launcher that died without one is reported as such."""
    if not raw:
        return LaunchReport(error="the launcher died without reporting (killed?)")
    return LaunchReport(**json.loads(raw))
