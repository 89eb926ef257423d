"""Helpers of the launcher module that other processes rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from worker.launcher import SETPRIV, dying_with_parent


@pytest.mark.skipif(SETPRIV is None, reason="util-linux setpriv is not installed")
def test_helper_processes_die_with_their_starter(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    starter = textwrap.dedent(f"""
        import subprocess, time
        from worker.launcher import dying_with_parent
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
    code = ("from worker.client import Sandrun\n"
            "Sandrun.create(broker_url='redis://127.0.0.1:1/0', plugins=[]).close()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert not (tmp_path / "state").exists()
    assert dying_with_parent(["x"])[-1] == "x"
