"""Memory cgroups for jobs, on the real kernel: a slot per pool process, armed per job.

Joining moves the *calling* process, so every scenario runs in a forked child (the
"pool process") that joins a slot, arms it and starts jobs the way the launcher
does (fork, ``job_oom_preexec``, exec); the pytest process never moves. Each test
removes the cgroups it makes, whatever happens.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import forked
from worker.sandbox.cgroupfs import locate, memory_delegable, own_cgroup
from worker.sandbox.cgroups import (
    SLACK_BYTES,
    CgroupSupport,
    MemoryUse,
    SlotCgroup,
    job_oom_preexec,
    probe,
    slot,
    sweep_stale,
)
from worker.sandbox.confine import IsolationError
from worker.sandbox.oomscore import may_lower as may_lower_oom_score

MiB = 1 << 20
SUPPORT = probe()
needs_cgroups = pytest.mark.skipif(SUPPORT.memory_root is None,
                                   reason=f"no memory cgroups here: {SUPPORT.why_not}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setresuid needs root")
#: Job code: allocate and touch argv[1] MiB (bytes * n writes every page).
TOUCH = "import sys; b = b'x' * (int(sys.argv[1]) << 20); print(len(b))"
#: Job code: reserve 4 GiB of address space, touch 1 MiB of it.
RESERVE = "import mmap; m = mmap.mmap(-1, 4 << 30); m[: 1 << 20] = b'x' * (1 << 20); print('ok')"

V1_HOST = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUPS = "8:pids:/\n4:memory:/api/job1\n0::/\n"
V2_HOST = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_a_v1_memory_hierarchy_is_found_next_to_a_v2_tree_without_controllers() -> None:
    assert locate(V1_HOST, V1_CGROUPS) == ("v1", "/sys/fs/cgroup/memory/api/job1")


def test_a_v2_only_host_gives_the_worker_cgroup_under_the_cgroup2_mount() -> None:
    assert locate(V2_HOST, "0::/system.slice/sandrun.service\n") == (
        "v2", "/sys/fs/cgroup/system.slice/sandrun.service")


def test_a_mount_of_part_of_the_hierarchy_and_escaped_paths_are_followed() -> None:
    mounted = "40 31 0:32 /api /mnt/memory\\040cg rw - cgroup cgroup rw,memory\n"
    assert locate(mounted, "4:memory:/api/job1\n") == ("v1", "/mnt/memory cg/job1")
    why = locate(mounted, "4:memory:/other\n")
    assert isinstance(why, str) and "mount the whole memory hierarchy" in why


def test_without_a_memory_controller_the_reason_says_what_to_mount() -> None:
    why = locate(V1_HOST.replace("memory", "cpu"), "4:cpu:/\n")
    assert isinstance(why, str) and "mount cgroup2" in why and "memory" in why


def test_the_probe_gives_a_writable_root_or_says_why_not() -> None:
    if SUPPORT.memory_root is None:
        assert SUPPORT.why_not
    else:
        assert SUPPORT.version in ("v1", "v2") and SUPPORT.why_not is None
        assert os.access(SUPPORT.memory_root, os.W_OK)


def test_v2_children_get_the_memory_controller_where_the_cgroup_has_it(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("pids\n")
    assert memory_delegable(str(tmp_path)) is None
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    assert "Delegate=yes" in (memory_delegable(str(tmp_path)) or "")


def _fake_v2(path: Path) -> None:
    for name, text in (("memory.max", "max"), ("memory.swap.max", "max"),
                       ("memory.current", "1000000"), ("memory.peak", "5000000"),
                       ("memory.events", "oom 0\noom_kill 0\n"), ("cgroup.procs", "")):
        (path / name).write_text(text)


def test_v2_files_are_armed_and_disarmed_as_the_kernel_documents(tmp_path: Path) -> None:
    _fake_v2(tmp_path)
    cgroup = SlotCgroup(str(tmp_path), "v2", str(tmp_path))
    cgroup.protected = True  # exempt from the OOM killer: the slack is SLACK_BYTES
    cgroup.arm(64 * MiB)
    assert int((tmp_path / "memory.max").read_text()) == 1000000 + 64 * MiB + SLACK_BYTES
    (tmp_path / "memory.peak").write_text("31000000")  # what the kernel would show now
    (tmp_path / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert cgroup.disarm() == MemoryUse(30000000, True)
    assert (tmp_path / "memory.max").read_text() == "max"


def test_v2_before_linux_6_12_reports_only_a_new_high_water_mark(tmp_path: Path) -> None:
    _fake_v2(tmp_path)
    cgroup = SlotCgroup(str(tmp_path), "v2", str(tmp_path))
    cgroup._peak_resets = False  # as if the kernel had refused the reset
    (tmp_path / "memory.peak").write_text("5000000")
    cgroup.arm(64 * MiB)
    assert cgroup.disarm().peak_bytes == 0  # the slot's old mark: nothing known of the job
    cgroup.arm(64 * MiB)
    (tmp_path / "memory.peak").write_text("9000000")
    assert cgroup.disarm().peak_bytes == 8000000


def test_join_refuses_a_name_that_is_no_single_cgroup_and_a_host_without_cgroups() -> None:
    with pytest.raises(IsolationError, match="one path component"):
        SlotCgroup.join("../escape", SUPPORT)
    with pytest.raises(IsolationError, match="cannot get memory cgroups here: mount the"):
        SlotCgroup.join("slot-1", CgroupSupport(None, None, "mount the controller"))


def test_disarm_without_arm_is_a_mistake_of_the_caller(tmp_path: Path) -> None:
    _fake_v2(tmp_path)
    with pytest.raises(RuntimeError, match="call arm"):
        SlotCgroup(str(tmp_path), "v2", str(tmp_path)).disarm()


@pytest.fixture
def sandrun() -> Iterator[Path]:
    """``<memory root>/sandrun``; afterwards the test's cgroups in it (named ``test-*``
    or ``slot-9999999*``), and the directory itself if the test made it, are gone."""
    assert SUPPORT.memory_root is not None
    parent = Path(SUPPORT.memory_root) / "sandrun"
    had_parent = parent.exists()
    try:
        yield parent
    finally:
        for path in [*parent.glob("test-*"), *parent.glob("slot-9999999*")]:
            _remove(path)
        sweep_stale(SUPPORT.memory_root)  # slot-<pid> of children that died in their slot
        if not had_parent and parent.exists() and not any(p.is_dir() for p in parent.iterdir()):
            parent.rmdir()  # a cgroup directory is never empty of files: of cgroups only


def _wait_empty(cgroup: Path) -> None:
    """Until the processes in ``cgroup`` are gone: orphans of a killed scenario child
    (such as its job, killed next) may still be exiting."""
    deadline = time.monotonic() + 10
    while (cgroup / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.01)


def _remove(cgroup: Path) -> None:
    _wait_empty(cgroup)
    cgroup.rmdir()


@pytest.fixture
def slot_name(sandrun: Path) -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def in_slot(name: str, scenario: Callable[[SlotCgroup], dict[str, Any]]) -> dict[str, Any]:
    """``scenario(slot)`` in a forked child that joined slot ``name`` (and leaves and
    removes it afterwards): its result, with ``removed`` saying the directory is gone."""
    def run() -> str:
        joined = SlotCgroup.join(name)
        try:
            result = scenario(joined)
        finally:
            joined.leave_and_remove()
        result["removed"] = not os.path.exists(joined.path)
        result["back_home"] = _memory_cgroup_of_self() == joined.origin
        return json.dumps(result)

    out = forked.in_child(run)
    if out.startswith("error"):
        pytest.fail(out)
    return dict(json.loads(out))


def _memory_cgroup_of_self() -> str:
    return own_cgroup(SUPPORT.version or "")


def run_job(cgroup: SlotCgroup, memory_bytes: int, code: str, *args: str) -> dict[str, Any]:
    """One job the way the launcher starts it, under ``arm(memory_bytes)``."""
    cgroup.arm(memory_bytes)
    room = cgroup.room
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              preexec_fn=job_oom_preexec, check=False)
    finally:
        use = cgroup.disarm()
    limit = (Path(cgroup.path) / ("memory.limit_in_bytes" if cgroup.version == "v1"
                                  else "memory.max")).read_text().strip()
    return {"returncode": done.returncode, "stderr": done.stderr.decode()[-300:], "room": room,
            "peak": use.peak_bytes, "oom_killed": use.oom_killed,
            "unlimited_after": limit in ("max", "-1") or int(limit) >= 1 << 62}


@needs_cgroups
def test_a_job_over_its_limit_is_oom_killed_and_the_pool_process_survives(
        slot_name: str) -> None:
    result = in_slot(slot_name, lambda s: run_job(s, 64 * MiB, TOUCH, "200"))
    assert result["returncode"] == -9, result  # SIGKILL from the memcg OOM killer
    assert result["oom_killed"] is True
    assert 64 * MiB <= result["peak"] <= result["room"] + SLACK_BYTES
    assert result["unlimited_after"] and result["removed"] and result["back_home"]


@needs_cgroups
def test_a_job_under_its_limit_runs_and_its_peak_is_its_resident_memory(
        slot_name: str) -> None:
    def two_jobs(s: SlotCgroup) -> dict[str, Any]:
        return {"small": run_job(s, 64 * MiB, TOUCH, "20"),
                "after_a_kill": [run_job(s, 64 * MiB, TOUCH, "200"),
                                 run_job(s, 64 * MiB, TOUCH, "20")]}

    result = in_slot(slot_name, two_jobs)
    for small in (result["small"], result["after_a_kill"][1]):
        assert small["returncode"] == 0 and small["oom_killed"] is False, small
        assert 20 * MiB <= small["peak"] <= 20 * MiB + SLACK_BYTES  # + the interpreter
        assert small["unlimited_after"]
    assert result["after_a_kill"][0]["oom_killed"] is True
    assert result["removed"]


@needs_cgroups
def test_reserved_but_untouched_address_space_is_not_charged(slot_name: str) -> None:
    result = in_slot(slot_name, lambda s: run_job(s, 64 * MiB, RESERVE))
    assert result["returncode"] == 0 and result["oom_killed"] is False, result
    assert result["peak"] < 64 * MiB


@needs_cgroups
def test_a_pool_process_bigger_than_a_job_plus_its_limit_is_safe_only_when_exempt(
        sandrun: Path, slot_name: str) -> None:
    """Among processes not exempt, the kernel weighs resident memory (all of it, wherever
    charged) plus oom_score_adj times the limit, so a 400 MiB pool process would outweigh
    a 64 MiB job at 1000: without CAP_SYS_RESOURCE the slot's room grows to keep the job
    first, with it the pool process is exempt."""
    def run() -> str:
        ballast = b"x" * (400 * MiB)  # charged to the cgroup it came from, but resident
        joined = SlotCgroup.join(slot_name)
        try:
            job = run_job(joined, 64 * MiB, TOUCH, "900")  # past any room the slot gives
        finally:
            joined.leave_and_remove()
        return json.dumps([joined.protected, job["oom_killed"], len(ballast)])

    out = forked.in_child(run)
    protected, job_killed, _ = json.loads(out)  # the pool process survived
    assert job_killed and protected == may_lower_oom_score()


def test_rlimit_as_refuses_the_same_reservation() -> None:
    """The contrast: the limit the cgroup replaces kills V8/JVM-style reservations."""
    def as_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (256 * MiB, 256 * MiB))

    done = subprocess.run([sys.executable, "-c", RESERVE], capture_output=True,
                          preexec_fn=as_limit, check=False)
    assert done.returncode != 0 and b"Cannot allocate memory" in done.stderr


def _score(pid: int | str = "self") -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


@needs_root
def test_jobs_inherit_the_pool_processes_score_unless_they_raise_it() -> None:
    def check() -> str:
        protected = -1000 if may_lower_oom_score() else 300  # raising needs no privilege
        Path("/proc/self/oom_score_adj").write_text(str(protected))
        inherited = subprocess.run([sys.executable, "-c", "print(open("
                                    "'/proc/self/oom_score_adj').read())"],
                                   capture_output=True, check=True).stdout
        raised = subprocess.run(  # as the job user: /bin/sh, since it may not read the venv
            ["/bin/sh", "-c", "cat /proc/self/oom_score_adj; echo 0 > /proc/self/oom_score_adj"],
            capture_output=True, preexec_fn=_raise_then_drop, check=False)
        return json.dumps([protected, int(inherited), int(raised.stdout),
                           "Permission denied" in raised.stderr.decode()])

    protected, inherited, raised, lowering_refused = json.loads(forked.in_child(check))
    assert inherited == protected
    assert raised == 1000  # kept through setresuid and exec
    # Lowering it again needs CAP_SYS_RESOURCE, unless the process that raised it lacked
    # that capability too (then the floor stays at 0): see CgroupSupport.notes.
    assert lowering_refused == may_lower_oom_score()


def _raise_then_drop() -> None:
    job_oom_preexec()
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


@needs_root
def test_raising_the_score_after_the_job_user_is_taken_fails_and_says_when_to() -> None:
    def check() -> str:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        try:
            job_oom_preexec()
        except IsolationError as exc:
            return str(exc)
        return f"raised to {_score()}"

    assert "before the job user is taken" in forked.in_child(check)


@needs_cgroups
def test_sweep_removes_empty_slots_of_dead_processes_only(sandrun: Path) -> None:
    dead, alive = sandrun / "slot-999999999", sandrun / f"slot-{os.getpid()}"
    occupied = sandrun / "slot-999999998"  # a pid above pid_max, so dead, but the child is in it

    def sweep(s: SlotCgroup) -> dict[str, Any]:
        dead.mkdir()
        made = not alive.exists()  # this process's own slot may exist from earlier jobs
        alive.mkdir(exist_ok=True)
        try:
            return {"swept": sweep_stale(SUPPORT.memory_root)}
        finally:
            if made and alive.exists():
                alive.rmdir()

    result = in_slot(occupied.name, sweep)
    # other processes' dead slots may be swept too (tests run in parallel): only ours count
    assert str(dead) in result["swept"]
    assert str(alive) not in result["swept"] and str(occupied) not in result["swept"]
    assert result["removed"]


@needs_cgroups
def test_slot_joins_once_per_process_and_a_forked_child_gets_its_own(sandrun: Path) -> None:
    def check() -> str:
        first = slot()
        assert first is not None
        try:
            again = slot()
            child = forked.in_child(lambda: str(slot() is not first))
            return json.dumps([first.path, again is first, child])
        finally:
            first.leave_and_remove()

    path, same, child_has_its_own = json.loads(forked.in_child(check))
    assert Path(path).name.startswith("slot-") and same and child_has_its_own == "True"
    assert not Path(path).exists()


@needs_cgroups
def test_joining_once_and_arming_per_job_fit_the_budget(slot_name: str) -> None:
    def timed() -> str:
        start = time.perf_counter()
        joined = SlotCgroup.join(slot_name)
        join = time.perf_counter() - start
        costs = []
        try:
            for _ in range(50):
                start = time.perf_counter()
                joined.arm(64 * MiB)
                joined.disarm()
                costs.append(time.perf_counter() - start)
        finally:
            joined.leave_and_remove()
        return json.dumps([join * 1e3, statistics.median(costs) * 1e3])

    join_ms, arm_disarm_ms = json.loads(forked.in_child(timed))
    print(f"\njoin {join_ms:.2f} ms once, arm+disarm {arm_disarm_ms:.3f} ms per job (median)")
    assert arm_disarm_ms < 3.0
