"""Output collection and cleanup read a hostile job directory without being steered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.sandbox.collect import CollectLimits, _pattern_matches, collect_outputs, remove_tree


def paths(root: Path, patterns: list[str], **limits: int) -> tuple[list[str], bool]:
    found, truncated = collect_outputs(root, patterns, CollectLimits(**limits))
    return [o.info.path for o in found], truncated


@pytest.fixture
def job(tmp_path: Path) -> Path:
    root = tmp_path / "job"
    root.mkdir()
    return root


def test_a_symlinked_directory_component_is_never_followed(job: Path, tmp_path: Path) -> None:
    secret = tmp_path / "host"
    secret.mkdir()
    (secret / "shadow").write_text("root:$6$hash")
    (job / "x").symlink_to(secret)
    (job / "s").symlink_to("/proc/self")
    (job / "ok.txt").write_text("mine")
    assert paths(job, ["x/shadow", "s/environ", "x/*", "*", "**/*"]) == (["ok.txt"], False)


def test_links_fifos_and_other_devices_are_skipped(job: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    os.link(outside, job / "hard.txt")
    (job / "link.txt").symlink_to(outside)
    os.mkfifo(job / "pipe")
    (job / "real.txt").write_text("ok")
    assert paths(job, ["*"]) == (["real.txt"], False)


def test_patterns_match_the_relative_paths_the_walk_yields(job: Path) -> None:
    for rel in ("a.png", "b.txt", "results/r1.csv", "results/deep/r2.csv", "x/y/z.txt"):
        (job / rel).parent.mkdir(parents=True, exist_ok=True)
        (job / rel).write_text(rel)
    assert paths(job, ["*.png"])[0] == ["a.png"]
    assert paths(job, ["results/"])[0] == ["results/deep/r2.csv", "results/r1.csv"]
    assert paths(job, ["**/*.txt"])[0] == ["b.txt", "x/y/z.txt"]
    assert _pattern_matches("out/*", "out/a/b") and not _pattern_matches("out/*.c", "out/a/b")


def test_deep_nesting_is_cut_at_the_depth_cap_and_removed_without_recursion(job: Path) -> None:
    deep = job
    for _ in range(1100):
        deep = deep / "d"
        os.mkdir(deep)
    (deep / "bottom.txt").write_text("x")
    (job / "top.txt").write_text("y")
    assert paths(job, ["*"], depth=32) == (["top.txt"], True)
    assert remove_tree(job) and not job.exists()


def test_many_files_stop_at_the_file_count_and_entry_caps(job: Path) -> None:
    for i in range(3000):
        (job / f"f{i:05}").write_bytes(b"1")
    found, truncated = paths(job, ["*"], files=100)
    assert len(found) == 100 and truncated
    found, truncated = paths(job, ["*"], entries=500)
    assert len(found) == 500 and truncated


def test_size_caps_report_truncation(job: Path) -> None:
    (job / "big").write_bytes(b"x" * 2000)
    (job / "small").write_bytes(b"x" * 10)
    assert paths(job, ["*"], file_bytes=1000) == (["small"], True)
    (job / "small2").write_bytes(b"x" * 10)
    assert paths(job, ["*"], total_bytes=15) == (["small"], True)


def test_remove_tree_never_follows_a_link_out_and_clears_unreadable_directories(
        job: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("do not delete")
    (job / "escape").symlink_to(keep)
    locked = job / "locked" / "inner"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    os.chmod(job / "locked", 0)
    assert remove_tree(job)
    assert (keep / "precious").read_text() == "do not delete"
    assert remove_tree(tmp_path / "never-existed")
