"""run_reaped: a probe's orphans are reaped before it returns, never left to the host's
PID 1 (which, in a container without --init or on some VMs, never reaps them)."""

from __future__ import annotations

import glob
import sys
import uuid
from pathlib import Path

from worker.sandbox.reaping import run_reaped


def alive(token: str) -> list[str]:
    """Processes (zombies included) whose command line or name carries ``token``."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if token.encode() in Path(path).read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


def test_an_orphan_that_outlives_its_parent_is_reaped_before_returning() -> None:
    token = f"orphan-{uuid.uuid4().hex}"
    # The shell exits at once; its background child lives on, orphaned, for 0.3 s.
    sleeper = f"{sys.executable} -c 'import time; time.sleep(0.3)' {token}"
    code, _ = run_reaped(["/bin/sh", "-c", f"({sleeper} </dev/null >/dev/null 2>&1 &) ; exit 3"])
    assert code == 3
    assert alive(token) == []


def test_stderr_and_a_missing_program_are_reported() -> None:
    code, stderr = run_reaped(["/bin/sh", "-c", "echo nope >&2; exit 1"])
    assert (code, stderr.strip()) == (1, "nope")
    code, stderr = run_reaped(["/nonexistent/program"])
    assert code == -1 and "/nonexistent/program" in stderr
