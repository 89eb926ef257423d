"""The sandboxed executor with real subprocesses: every limit and guarantee."""

from __future__ import annotations

import glob
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from worker.launcher import can_isolate_network
from worker.models import Job
from worker.sandbox import SandboxConfig, run_in_sandbox


def run(code: str, config: SandboxConfig | None = None, **fields: object):  # type: ignore[no-untyped-def]
    return run_in_sandbox(Job(code=code, **fields), config)  # type: ignore[arg-type]


def test_completed_with_usage_measured() -> None:
    result = run("print('hello')")
    assert (result.outcome, result.exit_code, result.stdout) == ("completed", 0, "hello\n")
    assert result.wall_seconds > 0 and result.cpu_seconds > 0
    assert result.memory_peak_bytes is None or 1 << 20 < result.memory_peak_bytes < 200 << 20


def test_exit_code_is_reported() -> None:
    result = run("import sys; print('bad', file=sys.stderr); sys.exit(7)")
    assert (result.outcome, result.exit_code, result.stderr) == ("failed", 7, "bad\n")


def test_memory_hog_hits_the_memory_limit() -> None:
    result = run("x = bytearray(200 * 1024 * 1024)", memory_mb=64)
    assert result.outcome == "memory_limit" and "MemoryError" in result.stderr


def test_cpu_spin_hits_the_cpu_limit() -> None:
    result = run("while True: pass", cpu_seconds=1, timeout=20)
    assert result.outcome == "cpu_limit"
    assert result.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert 0.9 < result.cpu_seconds < 3 and result.wall_seconds < 10


def test_timeout_kills_the_whole_tree_including_setsid_grandchildren(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    child = f"import os, time\nos.setsid()\nopen({str(pids)!r}, 'a').write(f'{{os.getpid()}} ')\n" \
        "time.sleep(300)\n"
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
    result = run_in_sandbox(job)
    assert result.outcome == "timeout" and time.monotonic() - started < 8
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 2
    for pid in found:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_background_processes_die_when_the_job_ends(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = (f"import subprocess; p = subprocess.Popen(['sleep', '300'], start_new_session=True);"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))")
    assert run(code).outcome == "completed"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


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
    config = SandboxConfig(workdir_root=str(tmp_path))
    result = run("import os; print(oct(os.stat('.').st_mode & 0o777)); print(os.getcwd())",
                 config)
    mode, cwd = result.stdout.split()
    assert mode == "0o700" and cwd.startswith(str(tmp_path))
    assert not Path(cwd).exists() and list(tmp_path.iterdir()) == []
    locked = "import os; os.makedirs('d/e'); open('d/e/f', 'w').write('x'); os.chmod('d', 0)"
    assert run(locked, config).outcome == "completed"
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.skipif(not can_isolate_network(), reason="host refuses network namespaces")
def test_network_isolation_refuses_connections() -> None:
    code = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 6379), 2)\n"
            "    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)")
    isolated = run(code, SandboxConfig(network_isolation=True))
    assert isolated.stdout.startswith("refused") and isolated.isolation == "process+network"
