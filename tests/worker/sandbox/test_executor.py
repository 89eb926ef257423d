"""The sandboxed executor with real subprocesses: every limit and guarantee."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.forked import BOUNDED_FORKS
from worker.models import Job
from worker.sandbox.collect import remove_tree
from worker.sandbox.executor import SandboxConfig, run_in_sandbox
from worker.sandbox.isolation import job_user_ids, probe
from worker.sandbox.jobdirs import _empty_slot
from worker.sandbox.plan import Policy

SUPPORT = probe(job_user_ids(SandboxConfig().job_user))
NO_VIEW = SandboxConfig(policy=Policy(filesystem="off"))


def run(code: str, config: SandboxConfig | None = None, **fields: object):  # type: ignore[no-untyped-def]
    return run_in_sandbox(Job(code=code, **fields), config)  # type: ignore[arg-type]


def test_completed_with_usage_measured() -> None:
    # Long enough (0.2 s) to be sampled however busy the machine is; a job of a few
    # milliseconds may end before its first sample after exec.
    result = run("import time\nx = bytearray(30 << 20)\nx[::4096] = b'1' * len(x[::4096])\n"
                 "time.sleep(0.2)\nprint('hello')")
    assert (result.outcome, result.exit_code, result.stdout) == ("completed", 0, "hello\n")
    assert result.wall_seconds > 0 and result.cpu_seconds > 0
    assert result.memory_peak_bytes is not None
    assert 30 << 20 < result.memory_peak_bytes < 200 << 20


def test_exit_code_is_reported() -> None:
    result = run("import sys; print('bad', file=sys.stderr); sys.exit(7)")
    assert (result.outcome, result.exit_code, result.stderr) == ("failed", 7, "bad\n")


def test_memory_hog_hits_the_memory_limit() -> None:
    result = run("x = bytearray(200 * 1024 * 1024)\nx[::4096] = b'1' * len(x[::4096])",
                 memory_mb=64)
    assert result.outcome == "memory_limit", result
    if "cgroup" in result.isolation.split("+"):  # resident memory: the kernel kills it
        assert result.signal == signal.SIGKILL and result.memory_peak_bytes
        assert result.memory_peak_bytes > 60 << 20  # it really had what it asked for
    else:  # address space: the allocation fails
        assert "MemoryError" in result.stderr


def test_cpu_spin_hits_the_cpu_limit() -> None:
    result = run("while True: pass", cpu_seconds=1, timeout=20)
    assert result.outcome == "cpu_limit"
    assert result.signal in (signal.SIGXCPU, signal.SIGKILL)
    # CPU time read back through bwrap's reaper falls short of the limit by up to a
    # tenth or so on a loaded machine; the signal is what names the outcome.
    assert 0.5 < result.cpu_seconds < 3 and result.wall_seconds < 10


def test_timeout_kills_the_whole_tree_including_setsid_grandchildren() -> None:
    child = "import os, time\nos.setsid()\nprint(os.getpid(), flush=True)\ntime.sleep(300)\n"
    main = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "child.py"])
if os.fork() == 0:
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "child.py"])
    os._exit(0)
time.sleep(300)
"""
    job = Job(entrypoint="main.py", files={"main.py": main, "child.py": child}, timeout=1.5)
    started = time.monotonic()
    result = run_in_sandbox(job, NO_VIEW)  # host pids: the launcher's own kill is tested
    assert result.outcome == "timeout" and time.monotonic() - started < 8
    found = [int(p) for p in result.stdout.split()]
    assert len(found) == 2
    for pid in found:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_background_processes_die_when_the_job_ends() -> None:
    token = f"bg-{uuid.uuid4().hex}"
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(300)', sys.argv[1]], start_new_session=True); print(p.pid)")
    result = run(code, NO_VIEW, args=[token])
    assert result.outcome == "completed"
    assert result.stderr.endswith("[sandrun: killed 1 process(es) the job left running]\n")
    with pytest.raises(ProcessLookupError):
        os.kill(int(result.stdout), 0)
    viewed = run(code, args=[token])  # dies with its PID namespace
    assert viewed.outcome == "completed" and leftovers(token) == []


def test_huge_stdout_is_capped_and_marked() -> None:
    config = SandboxConfig(stream_cap_bytes=4096)
    result = run("import sys\nfor _ in range(2000): sys.stdout.write('x' * 1000)", config)
    assert result.outcome == "completed" and result.stdout_truncated
    assert result.stdout.startswith("x" * 4096)
    assert f"{2_000_000 - 4096} more bytes not kept" in result.stdout


def test_job_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDRUN_BROKER_URL", "redis://:password@broker:6379/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    result = run("import os, json; print(json.dumps(dict(os.environ)))", env={"MODE": "x"})
    env = json.loads(result.stdout)
    assert env["MODE"] == "x" and env["HOME"] == env["TMPDIR"]
    assert not {"SANDRUN_BROKER_URL", "CELERY_RESULT_BACKEND", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert "password" not in result.stdout


def test_job_directory_is_private_and_always_removed(tmp_path: Path) -> None:
    tmp_path = Path(tempfile.mkdtemp())  # pytest's own is private to the test's user
    tmp_path.chmod(0o711)
    config = SandboxConfig(workdir_root=str(tmp_path), warm=False)  # no pre-started dir
    result = run("import os; print(oct(os.stat('.').st_mode & 0o777)); print(os.getcwd())",
                 config)
    mode, cwd = result.stdout.split()
    assert mode == "0o700" and cwd.startswith(str(tmp_path / "sandrun-jobs"))
    assert not Path(cwd).exists() and job_dirs(tmp_path) == []
    locked = "import os; os.makedirs('d/e'); open('d/e/f', 'w').write('x'); os.chmod('d', 0)"
    assert run(locked, config).outcome == "completed"
    assert job_dirs(tmp_path) == []
    for slot in slots_in(tmp_path):
        _empty_slot(slot)
    remove_tree(tmp_path)


def slots_in(root: Path) -> list[Path]:
    return sorted((root / "sandrun-jobs").glob("slot-*"))


def job_dirs(root: Path) -> list[Path]:
    """Job directories left beneath ``root`` (in its slots, or directly without one)."""
    jobs = root / "sandrun-jobs"
    return sorted(jobs.glob("job-*")) + [p for s in slots_in(root) for p in s.glob("job-*")]


@pytest.mark.skipif(job_user_ids("nobody") is None, reason="jobs run as the worker's own user")
def test_a_job_directory_the_job_user_cannot_reach_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    result = run("print('ran')", SandboxConfig(workdir_root=str(tmp_path)))
    assert (result.outcome, result.stdout) == ("failed", "")
    assert "is not searchable" in (result.error or "") and job_dirs(tmp_path) == []
    for slot in slots_in(tmp_path):
        _empty_slot(slot)


def test_files_are_written_and_planted_symlinks_are_not_collected() -> None:
    job = Job(entrypoint="main.py", files={"main.py": "import os\n"
              "os.symlink('/etc/passwd', 'out/passwd')\nopen('out/ok.txt','w').write('ok')",
              "out/.keep": ""}, outputs=["out/"])
    result = run_in_sandbox(job)
    assert result.outcome == "completed", result.stderr
    assert [o.info.path for o in result.outputs] == ["out/ok.txt"]


def test_output_caps() -> None:
    code = "open('big', 'wb').write(b'x' * 5000); open('small', 'wb').write(b'y' * 10)"
    config = SandboxConfig(output_file_cap_bytes=1000)
    result = run(code, config)
    assert [o.info.path for o in result.outputs] == ["small"] and result.outputs_truncated


def test_unchanged_inputs_are_not_outputs() -> None:
    job = Job(entrypoint="main.py", files={"main.py": "open('new.txt', 'w').write('n')",
                                           "data.csv": "a,b\n"})
    assert [o.info.path for o in run_in_sandbox(job).outputs] == ["new.txt"]


def test_interpreter_must_be_allowed_and_installed() -> None:
    config = SandboxConfig(interpreters=frozenset({"bash"}))
    result = run("print(1)", config)
    assert result.outcome == "failed" and "not allowed" in (result.error or "")
    missing = run_in_sandbox(Job(code="x", interpreter="no-such-lang"),
                             SandboxConfig(interpreters=frozenset({"no-such-lang"})))
    assert "not installed" in (missing.error or "")


def test_file_size_limit() -> None:
    config = SandboxConfig(file_size_limit_bytes=1 << 20)
    result = run("open('f', 'wb').write(b'x' * (4 << 20))", config)
    assert result.outcome in {"signal", "failed"} and result.outcome != "completed"


def test_no_temp_directories_leak() -> None:
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "sandrun-job-*")))
    for code in ("print(1)", "raise SystemExit(2)", "import time; time.sleep(5)"):
        run(code, timeout=0.5)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "sandrun-job-*"))) == before


CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()
    print("connected")
except OSError as exc:
    print("refused", exc.errno)
"""


@pytest.mark.skipif(not SUPPORT.network, reason=f"no network isolation here: {SUPPORT.notes}")
def test_network_isolation_refuses_a_loopback_server_of_the_host() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = str(server.getsockname()[1])
        isolated = run(CONNECT, SandboxConfig(policy=Policy(network="required")), args=[port])
        assert isolated.stdout.startswith("refused"), isolated.stderr
        assert "network" in isolated.isolation.split("+")
        open_config = SandboxConfig(policy=Policy(network="off"))
        assert run(CONNECT, open_config, args=[port]).stdout == "connected\n"  # it listens


def test_missing_network_isolation_fails_closed() -> None:
    config = SandboxConfig(policy=Policy(network="required"), support=replace(
        SUPPORT, network=False, notes=("no network namespaces (EPERM)",)))
    result = run("print('ran')", config)
    assert (result.outcome, result.stdout) == ("isolation_unavailable", "")
    assert "SANDRUN_NETWORK_ISOLATION is 'required'" in (result.error or "")


def test_home_and_tmpdir_are_the_writable_job_directory() -> None:
    code = ("import os, tempfile\nfd, path = tempfile.mkstemp()\nos.write(fd, b'x')\n"
            "print(os.path.dirname(path) == os.getcwd() == os.environ['HOME'])\n"
            "os.unlink(path)\nopen(os.path.expanduser('~/notes.txt'), 'w').write('n')")
    result = run(code)
    assert (result.outcome, result.stdout) == ("completed", "True\n"), result.stderr
    assert [o.info.path for o in result.outputs] == ["notes.txt"]


ESCAPES = """
import os, sys
outside = sys.argv[1]
attempts = {
    "create": lambda: open(os.path.join(outside, "new"), "w").close(),
    "append": lambda: open(os.path.join(outside, "existing"), "a").close(),
    "mkdir": lambda: os.mkdir(os.path.join(outside, "dir")),
    "remove": lambda: os.unlink(os.path.join(outside, "existing")),
    "symlink": lambda: os.symlink("/etc/passwd", os.path.join(outside, "link")),
    "move out": lambda: (open("mine", "w").close(), os.rename("mine", os.path.join(outside, "m"))),
    "tmp": lambda: open("/tmp/sandrun-escape-%d" % os.getpid(), "w").close(),
}
for name, attempt in attempts.items():
    try:
        attempt()
        print(name, "allowed")
    except OSError as exc:
        print(name, "denied", exc.errno)
"""


@pytest.mark.skipif(not SUPPORT.landlock_abi, reason=f"no Landlock here: {SUPPORT.notes}")
def test_writes_outside_the_job_directory_fail() -> None:
    with tempfile.TemporaryDirectory() as outside:
        os.chmod(outside, 0o777)  # the job user's permissions would allow every attempt
        Path(outside, "existing").write_text("keep")
        Path(outside, "existing").chmod(0o666)
        landlocked = SandboxConfig(support=replace(SUPPORT, view=False, seccomp=False))
        confined = run(ESCAPES, landlocked, args=[outside])
        assert confined.outcome == "completed", confined.stderr
        assert "filesystem" in confined.isolation.split("+")
        assert confined.stdout.count(" denied ") == 7, confined.stdout
        assert sorted(os.listdir(outside)) == ["existing"]
        unconfined = run(ESCAPES, SandboxConfig(policy=Policy(filesystem="off")), args=[outside])
        # the attempts work (moving out of the job's own tmpfs is EXDEV, whatever confines it)
        assert unconfined.stdout.count(" allowed") + unconfined.stdout.count(
            "move out denied 18") == 7, unconfined.stdout
    for leftover in glob.glob("/tmp/sandrun-escape-*"):
        os.unlink(leftover)


@pytest.mark.skipif(not SUPPORT.view, reason=f"no filesystem view here: {SUPPORT.notes}")
def test_in_its_view_a_job_sees_nothing_of_the_host_to_write_to() -> None:
    with tempfile.TemporaryDirectory() as outside:
        os.chmod(outside, 0o777)
        Path(outside, "existing").write_text("keep")
        Path(outside, "existing").chmod(0o666)
        confined = run(ESCAPES, args=[outside])
        assert "view" in confined.isolation.split("+"), confined
        assert confined.stdout.count(" denied 2") == 6, confined.stdout  # ENOENT: not there
        assert "tmp allowed" in confined.stdout  # its own /tmp, gone with it
        assert sorted(os.listdir(outside)) == ["existing"]
    assert glob.glob("/tmp/sandrun-escape-*") == []


def test_required_filesystem_isolation_fails_closed_without_landlock() -> None:
    config = SandboxConfig(policy=Policy(filesystem="required"),
                           support=replace(SUPPORT, landlock_abi=0, view=False))
    result = run("print('ran')", config)
    assert (result.outcome, result.stdout) == ("isolation_unavailable", "")
    assert "SANDRUN_FILESYSTEM_ISOLATION" in (result.error or "")


def leftovers(token: str) -> list[int]:
    """Processes whose command line carries ``token``."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if token.encode() in Path(path).read_bytes():
                found.append(int(path.split("/")[2]))
    return found


def test_the_process_limit_counts_the_jobs_own_processes() -> None:
    result = run(BOUNDED_FORKS, SandboxConfig(max_processes=12), timeout=10)
    assert result.outcome == "completed", result.stderr
    if SUPPORT.process_limit == "per-job":
        assert result.stdout == "refused after 11\n"  # 11 children and the job itself
    else:
        assert result.stdout.startswith("refused after")


BOMBS = {"python3": "import os\nwhile True:\n    os.fork()\n", "bash": ":(){ :|:& };:"}


@pytest.mark.timeout(60)
@pytest.mark.skipif(SUPPORT.process_limit != "per-job",
                    reason=f"no per-job process limit here: {SUPPORT.notes}")
@pytest.mark.parametrize("interpreter", sorted(BOMBS))
def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(interpreter: str) -> None:
    config = SandboxConfig(max_processes=16)
    # Never let a bomb loose unless a bounded test shows the limit holds right now.
    assert run(BOUNDED_FORKS, config, timeout=10).stdout == "refused after 15\n"
    token = f"bomb-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = run_in_sandbox(Job(code=BOMBS[interpreter], interpreter=interpreter, args=[token],
                                timeout=3, cpu_seconds=3), config)
    assert time.monotonic() - started < 10
    if "view" not in result.isolation:  # in a view, strays die with the PID namespace
        assert "[sandrun: killed" in result.stderr
    # bash's main process returns at once; its bomb may not have reached the limit yet.
    expected = {"process_limit"} if interpreter == "python3" else {"process_limit", "completed"}
    assert result.outcome in expected, result.stderr[-500:]
    assert leftovers(token) == []
    assert run("print('next')").stdout == "next\n"


SNOOP = """
import json, os
seen = {"env": dict(os.environ)}
launcher = os.getppid()
with open(f"/proc/{launcher}/stat") as fh:
    worker = int(fh.read().rsplit(")", 1)[1].split()[1])
for name, pid in (("launcher", launcher), ("worker", worker)):
    for part in ("environ", "mem"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as fh:
                seen[f"{name} {part}"] = fh.read(1 << 16).decode(errors="replace")
        except OSError as exc:
            seen[f"{name} {part}"] = f"denied {exc.errno}"
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            seen[f"environ of {pid}"] = fh.read().decode(errors="replace")
    except OSError:
        pass
print(json.dumps(seen))
"""
WORKER = """
import dataclasses, json, sys
from worker.models import Job
from worker.sandbox.executor import run_in_sandbox
run = run_in_sandbox(Job(code=sys.stdin.read()))
mine = open("/proc/self/environ", "rb").read()
print(json.dumps({"run": dataclasses.asdict(run), "has": b"SANDRUN_BROKER_URL=redis://:" in mine}))
"""


@pytest.mark.skipif(not SUPPORT.user_namespaces and job_user_ids("nobody") is None,
                    reason="jobs run as the worker's user, who may read its environment")
def test_a_job_cannot_find_the_workers_broker_password() -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    env = {**os.environ, "SANDRUN_BROKER_URL": f"redis://:{secret}@broker.invalid:6379/0",
           "CELERY_RESULT_BACKEND": f"redis://:{secret}@broker.invalid/1",
           "AWS_SECRET_ACCESS_KEY": secret, "REDIS_PASSWORD": secret}
    done = subprocess.run([sys.executable, "-c", WORKER], input=SNOOP, env=env, text=True,
                          capture_output=True, timeout=60, check=True)
    report = json.loads(done.stdout)
    assert report["has"]  # the worker process really holds the password in its environment
    assert secret not in done.stdout and secret not in done.stderr
    seen = json.loads(report["run"]["stdout"])
    assert sorted(set(seen["env"]) - {"PWD"}) == [  # bwrap sets PWD, the job directory
        "HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "SANDRUN_JOB_ID",
        "SANDRUN_PROGRESS_FD", "TMPDIR"]
    assert secret not in json.dumps(seen)
    if "view" in report["run"]["isolation"]:  # its parent is bwrap's pid 1, nothing beyond
        assert seen["worker environ"].startswith("denied")
    else:
        assert all(seen[f"{who} {part}"].startswith("denied")
                   for who in ("launcher", "worker") for part in ("environ", "mem"))
