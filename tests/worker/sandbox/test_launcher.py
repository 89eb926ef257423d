"""The launcher: the job process it starts, what it reports, and its helpers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from worker.sandbox.isolation import Confinement, probe
from worker.sandbox.launcher import (
    SETPRIV,
    LaunchReport,
    LaunchSpec,
    Limits,
    dying_with_parent,
    launch,
    parse_report,
)
from worker.sandbox.prepare import BASE_PATH
from worker.sandbox.reaping import release


@pytest.mark.skipif(SETPRIV is None, reason="util-linux setpriv is not installed")
def test_helper_processes_die_with_their_starter(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    starter = textwrap.dedent(f"""
        import subprocess, time
        from worker.sandbox.launcher import dying_with_parent
        child = subprocess.Popen(dying_with_parent(["sleep", "300"]))
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", starter])
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pidfile.read_text())
        # setpriv sets the death signal, then execs sleep: kill the starter only after
        # that (before it, the starter's death would reach no death signal yet)
        while Path(f"/proc/{child}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "Z" not in Path(
                f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            assert time.monotonic() < deadline, "the child outlived its starter"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_client_with_an_explicit_broker_never_starts_the_embedded_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
    env["SANDRUN_STATE_DIR"] = str(tmp_path / "state")
    code = ("from worker.client.client import Sandrun\n"
            "Sandrun.create(broker_url='redis://127.0.0.1:1/0', plugins=[]).close()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert not (tmp_path / "state").exists()
    assert dying_with_parent(["x"])[-1] == "x"


LIMITS = Limits(None, "as", 10, 1 << 20, 64)
SUPPORT = probe(None)
PYTHON = shutil.which("python3", path=BASE_PATH) or "python3"


def launched(argv: list[str], confinement: Confinement) -> tuple[LaunchReport, str]:
    """Run ``argv`` through the launcher as the worker's user: its report and stdout."""
    with tempfile.TemporaryDirectory() as cwd:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid, report_fd = launch(LaunchSpec(argv, cwd, {"PATH": BASE_PATH}, LIMITS, out_w, err_w,
                                           20, confinement))
        os.close(out_w)
        os.close(err_w)
        with os.fdopen(report_fd, "rb") as report, os.fdopen(out_r, "rb") as out:
            raw, stdout = report.read(), out.read().decode()
        os.close(err_r)
        release(pid, wait=True)
    return parse_report(raw), stdout


def test_a_job_that_cannot_be_confined_says_why() -> None:
    report, stdout = launched([PYTHON, "-c", "print('ran')"], Confinement(
        16, writable=("/no/such/job/directory",), landlock_abi=1))
    assert stdout == "" and report.exit_code is None
    assert report.error == ("cannot confine the job: [Errno 2] No such file or directory: "
                            "'/no/such/job/directory'")


def test_processes_left_running_are_killed_and_counted() -> None:
    report, stdout = launched(["/bin/sh", "-c", "sleep 300 & sleep 300 & echo started"],
                              Confinement(16, user_namespace=SUPPORT.user_namespaces))
    assert (report.exit_code, report.strays, stdout) == (0, 2, "started\n")


PEEK = """
import os
launcher = os.getppid()
with open(f"/proc/{launcher}/stat") as fh:
    starter = int(fh.read().rsplit(")", 1)[1].split()[1])
for pid in (launcher, starter):
    try:
        print(len(open(f"/proc/{pid}/environ", "rb").read()) > 0, end=" ")
    except OSError as exc:
        print(exc.errno, end=" ")
"""


@pytest.mark.skipif(not SUPPORT.user_namespaces, reason=f"no user namespaces: {SUPPORT.notes}")
def test_a_job_in_its_user_namespace_cannot_read_the_environment_of_processes_outside() -> None:
    # Even as the same uid: ptrace access (which /proc/<pid>/environ needs) requires being
    # in the target's user namespace or holding CAP_SYS_PTRACE over it.
    report, stdout = launched([PYTHON, "-c", PEEK], Confinement(16, user_namespace=True))
    assert (report.exit_code, stdout) == (0, "13 13 "), report
    if os.geteuid() != 0:  # without the namespace a job of the same user sees only this one
        report, stdout = launched([PYTHON, "-c", PEEK], Confinement(16))
        assert (report.exit_code, stdout) == (0, "13 True ")  # the launcher is not dumpable
