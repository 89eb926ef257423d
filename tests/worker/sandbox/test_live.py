"""Live output: the tee's batching, budget and progress rate (a clock the test moves),
and a real sandboxed job (bubblewrap view and seccomp where the host has them) whose
progress descriptor lets it write reports and do nothing else."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from worker.models import Job, Progress
from worker.sandbox.executor import SandboxConfig, run_in_sandbox
from worker.sandbox.isolation import job_user_ids, probe
from worker.sandbox.live import CHUNK_BYTES, FLUSH_BYTES, FLUSH_SECONDS, PROGRESS_SECONDS, Tee


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """Records what the tee hands on, in order."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[object] = []
        self.fail = fail
        self.lasts: list[bool] = []

    def output(self, chunks: Sequence[tuple[str, bytes]], last: bool = False) -> None:
        if self.fail:
            raise ConnectionError("redis is down")
        self.calls.append(list(chunks))
        self.lasts.append(last)

    def progress(self, report: Progress) -> None:
        self.calls.append(report)

    def arena(self) -> None:
        return None


def tee(sink: Sink, budget: int = 1 << 20) -> tuple[Tee, Clock]:
    clock = Clock()
    return Tee(sink, budget, clock), clock


def test_output_waits_for_the_flush_interval_then_goes_in_order() -> None:
    sink = Sink()
    live, clock = tee(sink)
    live.output("out", b"a\n")
    live.output("out", b"b\n")
    live.output("err", b"oops\n")
    live.output("out", b"c\n")
    live.tick()
    assert sink.calls == []
    assert live.due() == pytest.approx(100.0 + FLUSH_SECONDS)
    clock.now += FLUSH_SECONDS
    live.tick()
    assert sink.calls == [[("out", b"a\nb\n"), ("err", b"oops\n"), ("out", b"c\n")]]
    assert live.due() is None
    live.output("out", b"d\n")
    live.close()  # the job ended: what is pending goes as the last output
    assert sink.calls[-1] == [("out", b"d\n")] and sink.lasts == [False, True]


def test_a_full_batch_goes_at_once_in_capped_chunks() -> None:
    sink = Sink()
    live, _ = tee(sink)
    for _ in range(FLUSH_BYTES // 1024):
        live.output("out", b"x" * 1024)
    assert len(sink.calls) == 1
    chunks = sink.calls[0]
    assert isinstance(chunks, list)
    assert all(len(data) <= CHUNK_BYTES for _, data in chunks)
    assert b"".join(data for _, data in chunks) == b"x" * FLUSH_BYTES


def test_after_a_batch_forced_by_size_the_sink_hears_once_when_the_job_pauses() -> None:
    sink = Sink()
    live, clock = tee(sink)
    live.output("out", b"x" * FLUSH_BYTES)
    assert len(sink.calls) == 1
    assert live.due() == pytest.approx(100.0 + FLUSH_SECONDS)
    clock.now += FLUSH_SECONDS
    live.tick()
    live.tick()
    assert sink.calls[1:] == [[]] and live.due() is None
    live.output("out", b"x" * FLUSH_BYTES)
    live.output("out", b"y")  # more came: no empty hand-over, the batch goes in time
    clock.now += FLUSH_SECONDS
    live.tick()
    batch, last = sink.calls[2:]
    assert isinstance(batch, list) and b"".join(data for _, data in batch) == b"x" * FLUSH_BYTES
    assert last == [("out", b"y")]


def test_past_the_budget_one_note_then_nothing() -> None:
    sink = Sink()
    live, _ = tee(sink, budget=10)
    live.output("out", b"0123456")
    live.output("err", b"789abc")
    live.output("out", b"more")
    live.close()
    assert sink.calls == [[("out", b"0123456"), ("err", b"789"),
                           ("note", b"live output stopped after 10 bytes; the result keeps "
                                    b"the first part")]]


def test_progress_is_handed_on_at_most_every_interval_latest_wins() -> None:
    sink = Sink()
    live, clock = tee(sink)
    live.progress(b"1/4\n")
    live.progress(b"2/4\n")
    live.progress(b"3/4\n")
    assert sink.calls == [Progress(percent=25, done=1, total=4)]
    assert live.due() == pytest.approx(100.0 + PROGRESS_SECONDS)
    clock.now += PROGRESS_SECONDS
    live.tick()
    live.progress(b"4/4\n")
    live.close()
    assert sink.calls[1:] == [Progress(percent=75, done=3, total=4),
                              Progress(percent=100, done=4, total=4)]


def test_a_sink_that_fails_is_dropped_for_the_rest_of_the_job() -> None:
    sink = Sink(fail=True)
    live, clock = tee(sink)
    live.output("out", b"a")
    clock.now += FLUSH_SECONDS
    live.tick()  # raises inside: dropped, the job goes on
    live.progress(b"1/2\n")
    live.output("out", b"b")
    live.close()
    assert sink.calls == [] and live.sink is None


SUPPORT = probe(job_user_ids(SandboxConfig().job_user))
PROBE_FD = """
import errno, json, os, sys
fd = int(os.environ["SANDRUN_PROGRESS_FD"])
seen = {"mode": os.readlink(f"/proc/self/fd/{fd}").split(":")[0]}
try:
    os.read(fd, 1)
    seen["read"] = "allowed"
except OSError as exc:
    seen["read"] = errno.errorcode[exc.errno]
os.write(fd, b"1/3 first\\n")
print("line", flush=True)
os.write(fd, b"3/3 last\\n")
print(json.dumps(seen))
"""


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_the_progress_descriptor_only_takes_reports(warm: bool) -> None:
    config = SandboxConfig(warm=warm)
    if warm:
        run_in_sandbox(Job(code="pass"), config)  # leaves a warm sandbox for the next job
    sink = Sink()
    result = run_in_sandbox(Job(code=PROBE_FD), config, live=sink)
    assert result.outcome == "completed", result
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"mode": "pipe", "read": "EBADF"}  # a pipe's write end, nothing more
    if SUPPORT.view:
        assert "view" in result.isolation
    if SUPPORT.seccomp:
        assert "seccomp" in result.isolation
    reports = [call for call in sink.calls if isinstance(call, Progress)]
    first = Progress(percent=100 / 3, done=1, total=3, message="first")
    last = Progress(percent=100, done=3, total=3, message="last")
    assert reports in ([first, last], [last])  # both in one read: the latest wins
    printed = b"".join(data for call in sink.calls if isinstance(call, list)
                       for stream, data in call if stream == "out")
    assert printed.decode() == result.stdout
