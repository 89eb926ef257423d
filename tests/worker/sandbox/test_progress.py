"""The progress line protocol: what a job may write on SANDRUN_PROGRESS_FD, and what
the worker makes of anything else."""

from __future__ import annotations

import pytest

from worker.models import Progress
from worker.sandbox.progress import MAX_LINE, ProgressReader, parse_line


@pytest.mark.parametrize(("line", "expected"), [
    (b"4/10 training", Progress(percent=40, done=4, total=10, message="training")),
    (b"  4 / 10   training  ", Progress(percent=40, done=4, total=10, message="training")),
    (b"0/1", Progress(percent=0, done=0, total=1)),
    (b"10/10 done\r", Progress(percent=100, done=10, total=10, message="done")),
    (b"40%", Progress(percent=40)),
    (b"12.5% loading data", Progress(percent=12.5, message="loading data")),
    (b"100%", Progress(percent=100)),
    (b"1/3", Progress(percent=100 / 3, done=1, total=3)),
])
def test_the_two_forms_of_a_report(line: bytes, expected: Progress) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", [
    b"", b"   ", b"training", b"nan%", b"inf%", b"NaN/1", b"-1/2", b"1/-2", b"11/10",
    b"3/0", b"0/0", b"150%", b"100.1%", b"1e9%", b"0x10/20", b"4/10training", b"40 %x",
    b"9" * 20 + b"/" + b"9" * 20, b"1/" + b"9" * 14, b"4/10 " + b"m" * MAX_LINE,
    "\u0664/\u0661\u0660".encode(),  # Arabic-Indic digits: \d of a str, not of bytes
])
def test_anything_else_is_not_a_report(line: bytes) -> None:
    assert parse_line(line) is None


def test_the_message_is_cleaned_and_capped() -> None:
    report = parse_line(b"1/2 \x1b[31mred\x1b[0m \xff\xfe \xe2\x80\xaeevil\x00 " + b"m" * 200)
    assert report is not None
    assert "\x1b" not in report.message and "\x00" not in report.message
    assert "\u202e" not in report.message  # no right-to-left override for the terminal
    assert report.message.startswith("[31mred[0m \ufffd\ufffd evil")
    assert len(report.message) == 120


def test_the_latest_valid_report_of_a_read_wins() -> None:
    reader = ProgressReader()
    assert reader.feed(b"1/4 a\n2/4 b\nnot one\n150%\n") == Progress(
        percent=50, done=2, total=4, message="b")
    assert reader.feed(b"garbage\n") is None


def test_a_report_split_across_reads_is_joined() -> None:
    reader = ProgressReader()
    assert reader.feed(b"3/") is None
    assert reader.feed(b"4 al") is None
    assert reader.feed(b"most\n") == Progress(percent=75, done=3, total=4, message="almost")


def test_a_line_too_long_is_skipped_whole_however_it_arrives() -> None:
    reader = ProgressReader()
    assert reader.feed(b"1/2 " + b"x" * MAX_LINE) is None  # no newline yet, already too long
    assert reader.feed(b"y" * 100_000) is None  # the reader keeps none of it
    assert reader._partial == b""
    assert reader.feed(b"\n") is None  # the end of the long line: not a report
    assert reader.feed(b"1/2\n") == Progress(percent=50, done=1, total=2)
    # a partial line that grows past the limit on its last read is skipped too
    assert reader.feed(b"1/2 " + b"x" * (MAX_LINE - 10)) is None
    assert reader.feed(b"x" * 20 + b"\n2/2\n") == Progress(percent=100, done=2, total=2)


def test_describe_reads_as_the_status_line() -> None:
    assert Progress(percent=40, done=4, total=10, message="training").describe() == (
        "40% (step 4/10: 'training')")
    assert Progress(percent=12.5).describe() == "12%"
    assert Progress(percent=40, message="x").describe() == "40% ('x')"
    assert Progress(percent=100, done=1, total=1).describe() == "100% (step 1/1)"


def test_progress_fields_are_validated_when_read_back() -> None:
    with pytest.raises(ValueError, match="past the total"):
        Progress(percent=50, done=3, total=2)
    with pytest.raises(ValueError, match="both done and total"):
        Progress(percent=50, done=3)
    with pytest.raises(ValueError):
        Progress(percent=float("nan"))
