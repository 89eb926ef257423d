"""Landlock bindings: what a restricted process may still change, and whom it may reach."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.forked import in_child
from worker.sandbox import landlock
from worker.sandbox.confine import PR_SET_DUMPABLE, prctl

ABI = landlock.abi()
pytestmark = pytest.mark.skipif(not ABI, reason="this kernel has no Landlock (or it is off)")


def restricted(writable: str, check: Callable[[], str]) -> str:
    """``check()`` in a forked child that may change only ``writable`` and /dev/null."""
    def run() -> str:
        rules = [(os.open(writable, os.O_PATH), True), (os.open("/dev/null", os.O_PATH), False)]
        landlock.restrict(ABI, rules)
        return check()

    return in_child(run)


def attempt(action: Callable[[], object]) -> str:
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]


def test_changes_are_allowed_only_beneath_the_rules(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (other / "kept").write_text("kept")

    def check() -> str:
        return " ".join([
            attempt(lambda: (mine / "a").write_text("a")),
            attempt((mine / "d").mkdir),
            attempt(lambda: (mine / "a").rename(mine / "d" / "a")),
            attempt(lambda: Path("/dev/null").write_text("x")),
            attempt((other / "kept").read_text),
            attempt(lambda: (other / "new").write_text("x")),
            attempt(lambda: (other / "kept").write_text("changed")),
            attempt((other / "kept").unlink),
            attempt(lambda: (mine / "d" / "a").rename(other / "a")),
            attempt(lambda: os.link(other / "kept", mine / "hard")),
        ])

    results = restricted(str(mine), check).split()
    assert results[:5] == ["ok"] * 5  # inside, /dev/null and reading elsewhere
    assert all(r in {"EACCES", "EXDEV", "EPERM"} for r in results[5:]), results
    assert sorted(os.listdir(other)) == ["kept"] and (other / "kept").read_text() == "kept"


def test_processes_outside_cannot_be_traced_or_signalled() -> None:
    def run() -> str:  # as an ordinary user, look at this process from a child, then a jailed one
        if os.geteuid() == 0:  # root may trace anyone; jobs are never root on the host
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            prctl(PR_SET_DUMPABLE, 1)  # as it was before the uid changed
        me = os.getpid()

        def look() -> str:
            return " ".join([attempt(Path(f"/proc/{me}/environ").read_bytes),
                             attempt(lambda: os.kill(me, 0))])

        return f"{in_child(look)} | {restricted('/tmp', look)}"

    signal = "EPERM" if ABI >= 6 else "ok"
    assert in_child(run) == f"ok ok | EACCES {signal}"


def test_a_bad_rule_says_what_failed() -> None:
    def run() -> str:
        landlock.restrict(ABI, [(os.open("/dev/null", os.O_PATH), True)])  # a file as a dir
        return "restricted"

    assert in_child(run) == "error: [Errno 22] cannot add a Landlock rule: Invalid argument"
