"""Slots: a uid per pool process, a root-owned tree nobody may list, stale slots swept."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.sandbox import jobdirs
from worker.sandbox.confine import IsolationError

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker has slots")


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    yield path
    if (path / jobdirs.JOBS_DIR).is_dir() and not (path / jobdirs.JOBS_DIR).is_symlink():
        jobdirs.sweep(path / jobdirs.JOBS_DIR)
    for slot in (path / jobdirs.JOBS_DIR).glob("slot-*"):
        jobdirs._empty_slot(slot)  # slots the test still holds
        slot.rmdir()
    jobdirs.remove_tree(path)


def test_uid_ranges_parse_and_refuse_nonsense() -> None:
    assert jobdirs.UidRange.parse("200000-200999") == jobdirs.UidRange(200000, 200999)
    assert jobdirs.UidRange.parse("300000") == jobdirs.UidRange(300000, 300000)
    for bad in ("x-y", "0-10", "20-10"):
        with pytest.raises(ValueError, match="job uid range"):
            jobdirs.UidRange.parse(bad)


@ROOT_ONLY
def test_two_slots_never_share_a_uid_and_the_tree_is_not_listable(root: Path) -> None:
    uids = jobdirs.UidRange(250000, 250001)
    first = jobdirs.acquire(str(root), uids, 8 << 20)
    second = jobdirs.acquire(str(root), uids, 8 << 20)
    assert (first.uid, second.uid) == (250000, 250001)
    with pytest.raises(IsolationError, match="widen SANDRUN_JOB_UIDS"):
        jobdirs.acquire(str(root), uids, 0)
    jobs = root / jobdirs.JOBS_DIR
    assert stat.S_IMODE(jobs.stat().st_mode) == 0o711
    assert stat.S_IMODE(first.base.stat().st_mode) == 0o711
    job = jobdirs.new_jobdir(first.base, (first.uid, first.uid))
    assert job.stat().st_uid == first.uid and stat.S_IMODE(job.stat().st_mode) == 0o700
    jobdirs.release(first)
    jobdirs.release(second)


@ROOT_ONLY
def test_workers_with_different_job_roots_never_share_a_uid(root: Path) -> None:
    """A uid is the host's: its lock does not live beneath the job directory root."""
    other = Path(tempfile.mkdtemp())
    other.chmod(0o755)
    uids = jobdirs.UidRange(250005, 250006)
    first = jobdirs.acquire(str(root), uids, 0)
    try:
        second = jobdirs.acquire(str(other), uids, 0)
        assert (first.uid, second.uid) == (250005, 250006)
        jobdirs.release(second)
    finally:
        jobdirs.release(first)
        jobdirs.remove_tree(other)


@ROOT_ONLY
def test_the_slot_disk_is_capped(root: Path) -> None:
    slot = jobdirs.acquire(str(root), jobdirs.UidRange(250010, 250010), 4 << 20)
    with pytest.raises(OSError, match="No space left"), open(slot.base / "fill", "wb") as fh:
        fh.write(b"x" * (8 << 20))
    assert os.statvfs(slot.base).f_blocks * os.statvfs(slot.base).f_frsize <= 4 << 20
    jobdirs.release(slot)


@ROOT_ONLY
def test_a_slot_left_by_a_dead_process_is_swept(root: Path) -> None:
    slot = jobdirs.acquire(str(root), jobdirs.UidRange(250020, 250020), 4 << 20)
    (slot.base / "job-left" / "deep").mkdir(parents=True)
    os.close(slot.lock_fd)  # as if its process died
    os.close(slot.host_lock_fd)
    assert jobdirs.sweep(root / jobdirs.JOBS_DIR) == [250020]
    assert not slot.base.exists()


@ROOT_ONLY
def test_a_planted_link_is_refused(root: Path) -> None:
    (root / jobdirs.JOBS_DIR).symlink_to("/etc")
    with pytest.raises(IsolationError, match="not a directory owned by the worker"):
        jobdirs.jobs_root(str(root))
    (root / jobdirs.JOBS_DIR).unlink()
