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
from worker.sandbox import executor, warm
from worker.sandbox.executor import SandboxConfig, run_in_sandbox
from worker.sandbox.isolation import probe

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
    seen: dict[str, object] = json.loads(result.stdout)
    seen["env"] = {k: v for k, v in seen["env"].items()  # type: ignore[attr-defined]
                   if k not in ("PWD", "SANDRUN_JOB_ID", "HOME", "TMPDIR")}
    progress = seen["env"].pop("SANDRUN_PROGRESS_FD")  # type: ignore[attr-defined]
    assert progress in seen["fds"]  # type: ignore[operator]
    # its number is the pool process's at pre-start or at launch: the same pipe either way
    seen["fds"] = sorted("<progress>" if fd == progress else fd for fd in seen["fds"])  # type: ignore[attr-defined]
    job_dir = str(seen["cwd"])
    seen["mounts"] = [m.replace(job_dir, "<job>") for m in seen["mounts"]]  # type: ignore[attr-defined]
    seen["cwd"] = os.path.dirname(job_dir)  # the slot, not the random name
    return seen


@VIEW
def test_a_warm_launch_gives_the_job_what_a_cold_one_does() -> None:
    cold = _look(SandboxConfig(warm=False))
    config = SandboxConfig()
    run_in_sandbox(Job(code="pass"), config)  # leaves a warm sandbox behind
    assert os.getpid() in executor._warm
    warmed = _look(config)
    assert warmed == cold
    assert warmed["seccomp"] == "2" and warmed["nnp"] == "1" and warmed["stdin"] == "/dev/null"
    assert warmed["argv"] == HOSTILE


@VIEW
def test_a_warm_sandbox_that_died_is_replaced_without_losing_the_job() -> None:
    config = SandboxConfig()
    run_in_sandbox(Job(code="pass"), config)
    box = executor._warm[os.getpid()]
    os.kill(box.pid, signal.SIGKILL)
    time.sleep(0.05)
    result = run_in_sandbox(Job(code="print('ran')"), config)
    assert (result.outcome, result.stdout) == ("completed", "ran\n")
    assert not box.workdir.exists()


@VIEW
def test_limits_and_timeouts_hold_on_the_warm_path() -> None:
    config = SandboxConfig()
    run_in_sandbox(Job(code="pass"), config)
    spin = run_in_sandbox(Job(code="while True: pass", cpu_seconds=1, timeout=20), config)
    assert spin.outcome == "cpu_limit", spin
    started = time.monotonic()
    slow = run_in_sandbox(Job(code="import time; time.sleep(30)", timeout=1), config)
    assert slow.outcome == "timeout" and time.monotonic() - started < 8
    assert slow.wall_seconds < 3  # counted from the job's start, not from the pre-start


@VIEW
def test_a_job_needing_the_network_leaves_the_warm_sandbox_for_the_next_job() -> None:
    config = SandboxConfig(policy=executor.Policy(allow_job_network=True))
    run_in_sandbox(Job(code="pass"), config)
    box = executor._warm[os.getpid()]
    assert run_in_sandbox(Job(code="pass", network=True), config).outcome == "completed"
    assert executor._warm[os.getpid()] is box and box.alive()
    executor.release_slots()
    assert os.getpid() not in executor._warm and not box.workdir.exists()


@VIEW
def test_a_job_refused_before_it_runs_does_not_leave_the_warm_sandbox_running() -> None:
    config = SandboxConfig()
    run_in_sandbox(Job(code="pass"), config)
    box = executor._warm[os.getpid()]
    bad = run_in_sandbox(Job(code="pass", interpreter="no-such-lang"), config)
    assert bad.outcome == "failed" and "not allowed" in (bad.error or "")
    assert executor._warm[os.getpid()] is not box
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
