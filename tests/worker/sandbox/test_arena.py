"""The arena streamed output is read into: its views, its reuse within one process only,
its absence from a forked child, and the tee joining adjacent reads into chunks; then a
real sandboxed job printing more than a small arena holds, streamed in order."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

from worker.models import Job, Progress
from worker.sandbox.arena import Arena, lease
from worker.sandbox.executor import SandboxConfig, run_in_sandbox
from worker.sandbox.live import CHUNK_BYTES, Data, Tee


class ArenaSink:
    """Lends ``arena`` and records copies of the chunks handed on, in order."""

    def __init__(self, arena: Arena) -> None:
        self.lent = arena
        self.chunks: list[tuple[str, bytes]] = []
        self.kinds: list[type] = []

    def output(self, chunks: Sequence[tuple[str, Data]], last: bool = False) -> None:
        self.kinds += [type(data) for _, data in chunks]
        self.chunks += [(stream, bytes(data)) for stream, data in chunks]

    def progress(self, report: Progress) -> None:
        """Not used here."""

    def arena(self) -> Arena:
        return self.lent


def read_into(tee: Tee, stream: str, data: bytes) -> None:
    """What the pump does with reads of ``data`` from ``stream``: into the arena while it
    has room, then as bytes."""
    while data:
        into = tee.space(len(data))
        if into is None:
            tee.output(stream, data)
            return
        into[:] = data[:len(into)]
        tee.took(stream, len(into))
        data = data[len(into):]


def test_kept_spans_are_views_of_what_was_read() -> None:
    arena = Arena(4096)
    space = arena.space(3)
    assert space is not None
    space[:] = b"abc"
    first = arena.keep(3)
    rest = arena.space(10_000)
    assert rest is not None and len(rest) == 4093
    rest[:2] = b"de"
    second = arena.keep(2)
    assert bytes(arena.view(first)) == b"abc"
    assert bytes(arena.view((first[0], second[1]))) == b"abcde"
    arena.keep(4091)
    assert arena.space(1) is None  # full


def test_a_recycled_arena_serves_the_next_lease_and_one_held_never_does() -> None:
    held = lease()
    other = lease()
    assert other is not held  # the first is still a job's
    held.keep(10)
    held.recycle()
    again = lease()
    assert again is held and again.used == 0
    assert lease() is not held  # leased again: nobody else gets it


def test_a_forked_child_has_no_mapping_of_the_arena() -> None:
    arena = Arena(1 << 20)
    address = ctypes.addressof(ctypes.c_char.from_buffer(arena._map))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with open("/proc/self/maps") as maps:
                spans = [line.split()[0].split("-") for line in maps]
            mapped = any(int(lo, 16) <= address < int(hi, 16) for lo, hi in spans)
            os.write(write_end, b"mapped" if mapped else b"absent")
        finally:
            os._exit(0)
    os.close(write_end)
    seen = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert seen == b"absent"


def test_adjacent_reads_of_one_stream_become_one_view_up_to_a_chunk() -> None:
    sink = ArenaSink(Arena(1 << 20))
    tee = Tee(sink, 1 << 20)
    read_into(tee, "out", b"a" * 1000)
    read_into(tee, "out", b"b" * 1000)
    read_into(tee, "err", b"e" * 10)
    read_into(tee, "out", b"c" * CHUNK_BYTES)
    tee.close()
    assert sink.chunks == [("out", b"a" * 1000 + b"b" * 1000), ("err", b"e" * 10),
                           ("out", b"c" * CHUNK_BYTES)]
    assert set(sink.kinds) == {memoryview}  # handed on without a copy


def test_past_a_full_arena_the_output_goes_on_as_bytes_in_order() -> None:
    sink = ArenaSink(Arena(100))
    tee = Tee(sink, 1 << 20)
    read_into(tee, "out", b"x" * 60)
    read_into(tee, "out", b"y" * 60)  # 40 fit, the pump reads the rest as bytes
    tee.close()
    assert b"".join(data for _, data in sink.chunks) == b"x" * 60 + b"y" * 60
    assert sink.kinds == [memoryview, bytes]


def test_the_budget_ends_the_arena_reads_with_one_note() -> None:
    sink = ArenaSink(Arena(1 << 20))
    tee = Tee(sink, 10)
    into = tee.space(64)
    assert into is not None and len(into) == 10  # no more than the budget
    into[:] = b"0123456789"
    tee.took("out", 10)
    assert tee.space(64) is None
    tee.output("out", b"more")
    tee.close()
    assert [stream for stream, _ in sink.chunks] == ["out", "note"]


BIG = """
import sys
for i in range(40):
    sys.stdout.buffer.write(str(i).encode() * 40000 + b"\\n")
    sys.stderr.buffer.write(b"e%d\\n" % i)
"""


def test_a_real_job_streams_past_a_small_arena_in_order() -> None:
    sink = ArenaSink(Arena(256 << 10))  # a small part of what the job prints
    result = run_in_sandbox(Job(code=BIG), SandboxConfig(), live=sink)
    assert result.outcome == "completed", result
    out = b"".join(data for stream, data in sink.chunks if stream == "out")
    err = b"".join(data for stream, data in sink.chunks if stream == "err")
    assert out == b"".join(str(i).encode() * 40000 + b"\n" for i in range(40))
    assert err.decode() == result.stderr == "".join(f"e{i}\n" for i in range(40))
    assert {memoryview, bytes} <= set(sink.kinds)  # the arena first, then bytes
    assert result.stdout_truncated  # the result keeps the first part, the stream all
    assert out.startswith(result.stdout.split("\n[sandrun: output truncated")[0].encode())


class NoArena(ArenaSink):
    def arena(self) -> Arena:
        raise OSError(12, "Cannot allocate memory")


def test_a_sink_whose_arena_fails_still_gets_the_output_as_bytes() -> None:
    sink = NoArena(Arena(1))
    tee = Tee(sink, 1 << 20)
    assert tee.space(64) is None and tee.sink is sink
    read_into(tee, "out", b"hello")
    tee.close()
    assert sink.chunks == [("out", b"hello")] and sink.kinds == [bytes]
