"""The warm launch path: a pre-started view gives the job exactly what a cold one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from worker.models import Job
from worker.sandbox import warm, warmpool
from worker.sandbox.executor import SandboxConfig, SandboxRun, release_slots, run_in_sandbox
from worker.sandbox.isolation import probe
from worker.sandbox.plan import Policy

SUPPORT = probe((200000, 200000)) if os.geteuid() == 0 else probe()
VIEW = pytest.mark.skipif(not SUPPORT.view, reason=f"no filesystem view here: {SUPPORT.notes}")

LOOK = """
import json, os, resource, sys
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({
    "argv": sys.argv[1:], "env": dict(os.environ), "uid": os.getuid(), "cwd": os.getcwd(),
    "limits": {name: resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))
               for name in ("CPU", "NPROC", "NOFILE", "FSIZE", "AS", "DATA", "CORE")},
    "seccomp": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip(),
    "caps": status["CapEff"].strip(), "fds": sorted(os.listdir("/proc/self/fd")),
    "root": sorted(os.listdir("/")), "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
    "stdin": os.readlink("/proc/self/fd/0"), "oom": open("/proc/self/oom_score_adj").read().strip(),
    "mounts": sorted(line.split()[4] for line in open("/proc/self/mountinfo")),
}))
"""
#: What a pre-started interpreter could leave different from a cold start, then a traceback.
PYTHON_LOOK = """
import __main__
print(json.dumps({
    "modules": sorted(sys.modules), "path": sys.path, "orig_argv": sys.orig_argv,
    "importer_cache": sorted(sys.path_importer_cache), "main": sorted(vars(__main__)),
    "file": __file__, "flags": list(sys.flags), "listing": sorted(os.listdir(".")),
    "cmdline": open("/proc/self/cmdline").read(), "excepthook": sys.excepthook.__name__,
    "stdin_blksize": sys.stdin.buffer.raw._blksize,
}))
import atexit
atexit.register(lambda: print("at exit"))
def fails():
    1 / 0
fails()
"""
HOSTILE = ["$(touch /tmp/x)", "a'b", 'c"d', "e\nf", "`id`", "g;h", "*", "--", "-i"]


def test_the_script_passes_every_value_literally() -> None:
    env = {"A": "$(echo no)", "B": "x'y\nz", "C": "", "D": "*"}
    script = warm.script([sys.executable, "-c", "import json, os, sys; print(json.dumps("
                          "[sys.argv[1:], dict(os.environ)]))", *HOSTILE], env, 5, None)
    done = subprocess.run([warm.SHELL, "-s"], input=script, capture_output=True, check=True,
                          env={})
    argv, seen = json.loads(done.stdout)
    assert argv == HOSTILE
    assert {k: v for k, v in seen.items() if k != "LC_CTYPE"} == env


def _look(config: SandboxConfig) -> dict[str, object]:
    result = run_in_sandbox(Job(code=LOOK, args=HOSTILE, env={"MODE": "x'$(id)"}), config)
    assert result.outcome == "completed", result
    return _seen(result)


def _seen(result: SandboxRun) -> dict[str, object]:
    """What the job printed (LOOK's lines, then PYTHON_LOOK's), made comparable."""
    lines = result.stdout.splitlines()
    seen: dict[str, object] = json.loads(lines[0])
    for line in lines[1:]:
        seen.update(json.loads(line) if line.startswith("{") else {"after": line})
    seen.update(exit=result.exit_code, stderr=result.stderr)
    seen["env"] = {k: v for k, v in seen["env"].items()  # type: ignore[attr-defined]
                   if k not in ("PWD", "SANDRUN_JOB_ID", "HOME", "TMPDIR")}
    progress = seen["env"].pop("SANDRUN_PROGRESS_FD")  # type: ignore[attr-defined]
    assert progress in seen["fds"]  # type: ignore[operator]
    # its number is the pool process's at pre-start or at launch: the same pipe either way
    seen["fds"] = sorted("<progress>" if fd == progress else fd for fd in seen["fds"])  # type: ignore[attr-defined]
    job_dir = str(seen["cwd"])
    return {key: json.loads(json.dumps(value).replace(job_dir, "<job>"))
            for key, value in seen.items()} | {"cwd": os.path.dirname(job_dir)}


def _through_warm(config: SandboxConfig, job: Job, *, python: bool) -> SandboxRun:
    """Run ``job`` through the warm sandbox a plain job leaves behind, checking it went
    through it, with a pre-started interpreter (``python``) or the shell."""
    run_in_sandbox(Job(code="pass"), config)  # leaves a warm sandbox behind
    box = warmpool._warm[os.getpid()]
    assert (box.python is not None) == python
    result = run_in_sandbox(job, config)
    assert box.used and not (box.workdir / ".local").exists()
    return result


@VIEW
def test_a_warm_launch_gives_the_job_what_a_cold_one_does() -> None:
    cold = _look(SandboxConfig(warm=False))
    config = SandboxConfig(warm_python=False)
    run_in_sandbox(Job(code="pass"), config)  # leaves a warm sandbox behind
    assert warmpool._warm[os.getpid()].python is None
    warmed = _look(config)
    assert warmed == cold
    assert warmed["seccomp"] == "2" and warmed["nnp"] == "1" and warmed["stdin"] == "/dev/null"
    assert warmed["argv"] == HOSTILE


@VIEW
def test_a_pre_started_interpreter_gives_the_job_what_a_cold_start_does() -> None:
    job = Job(code=LOOK + PYTHON_LOOK, env={"MODE": "x'$(id)", "EMPTY": ""})
    cold = _seen(run_in_sandbox(job, SandboxConfig(warm=False)))
    warmed = _seen(_through_warm(SandboxConfig(), job, python=True))
    assert warmed == cold
    assert warmed["exit"] == 1 and "in fails" in str(warmed["stderr"])
    assert str(warmed["stderr"]).count('File "<job>/__sandrun_main__.py"') == 2  # its frames only
    assert warmed["after"] == "at exit"
    assert warmed["seccomp"] == "2" and warmed["stdin"] == "/dev/null"
    assert "usercustomize" not in warmed["modules"]  # type: ignore[operator]
    assert warmed["listing"] == ["__sandrun_main__.py"]
    assert warmed["env"]["MODE"] == "x'$(id)"  # type: ignore[index]


@VIEW
@pytest.mark.parametrize(("job", "shows"), [
    (Job(code="import sys; print(sys.flags.hash_randomization)", env={"PYTHONHASHSEED": "0"}),
     "0"),
    (Job(code="import sys; print(sys.argv[1:])", args=["a"]), "['a']"),
    (Job(code="import site; print(site.USER_BASE)", env={"HOME": "/tmp"}), "/tmp/.local"),
    (Job(code="pass", files={
        ".local/lib/python3.11/site-packages/usercustomize.py": "print('user site read')"}),
     "user site read"),
], ids=["python-env", "args", "home", "user-site-file"])
def test_a_job_a_pre_started_interpreter_cannot_run_as_a_cold_start_launches_cold(
        job: Job, shows: str) -> None:
    cold = run_in_sandbox(job, SandboxConfig(warm=False))
    config = SandboxConfig()
    run_in_sandbox(Job(code="pass"), config)
    box = warmpool._warm[os.getpid()]
    assert box.python is not None
    result = run_in_sandbox(job, config)
    assert result.outcome == "completed", result
    assert result.stdout == cold.stdout == f"{shows}\n"
    assert not box.used
    assert warmpool._warm[os.getpid()].python is None  # the next one is for jobs like it


def _child_of(pid: int) -> int:
    """The process a launcher started (bwrap), once it has started it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = fh.read().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"launcher {pid} started nothing")


@VIEW
@pytest.mark.parametrize("python", [True, False], ids=["interpreter", "shell"])
@pytest.mark.parametrize("victim", ["launcher", "view"])
def test_a_warm_sandbox_that_died_is_replaced_without_losing_the_job(
        python: bool, victim: str) -> None:
    config = SandboxConfig(warm_python=python)
    run_in_sandbox(Job(code="pass"), config)
    box = warmpool._warm[os.getpid()]
    if victim == "launcher":
        os.kill(box.pid, signal.SIGKILL)
    else:  # bwrap, and the interpreter in it: the launcher notices and reports
        os.kill(_child_of(box.pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while box.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    result = run_in_sandbox(Job(code="print('ran')"), config)
    assert (result.outcome, result.stdout) == ("completed", "ran\n")
    assert not box.used and not box.workdir.exists()


@VIEW
@pytest.mark.parametrize("python", [True, False], ids=["interpreter", "shell"])
def test_limits_and_timeouts_hold_on_the_warm_path(python: bool) -> None:
    config = SandboxConfig(warm_python=python, policy=Policy(cgroups="off"))
    spin = _through_warm(config, Job(code="while True: pass", cpu_seconds=1, timeout=20),
                         python=python)
    assert spin.outcome == "cpu_limit", spin
    hog = _through_warm(config, Job(code="x = bytearray(300 << 20)", memory_mb=64),
                        python=python)
    assert hog.outcome == "memory_limit", hog
    started = time.monotonic()
    slow = _through_warm(config, Job(code="import time; time.sleep(30)", timeout=1),
                         python=python)
    assert slow.outcome == "timeout" and time.monotonic() - started < 8
    assert slow.wall_seconds < 3  # counted from the job's start, not from the pre-start


@VIEW
def test_a_job_needing_the_network_leaves_the_warm_sandbox_for_the_next_job() -> None:
    config = SandboxConfig(policy=Policy(allow_job_network=True))
    run_in_sandbox(Job(code="pass"), config)
    box = warmpool._warm[os.getpid()]
    assert run_in_sandbox(Job(code="pass", network=True), config).outcome == "completed"
    assert warmpool._warm[os.getpid()] is box and box.alive()
    release_slots()
    assert os.getpid() not in warmpool._warm and not box.workdir.exists()


@VIEW
def test_a_job_refused_before_it_runs_does_not_leave_the_warm_sandbox_running() -> None:
    config = SandboxConfig()
    run_in_sandbox(Job(code="pass"), config)
    box = warmpool._warm[os.getpid()]
    bad = run_in_sandbox(Job(code="pass", interpreter="no-such-lang"), config)
    assert bad.outcome == "failed" and "not allowed" in (bad.error or "")
    assert warmpool._warm[os.getpid()] is not box
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # its launcher was told to go, and goes
        try:
            if os.waitpid(box.pid, os.WNOHANG) != (0, 0):
                break
        except ChildProcessError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the discarded warm sandbox's launcher still runs")
