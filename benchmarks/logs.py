"""The throughput cost of live logs: a job printing 10 MB, captured only and streamed.

The same job runs through the executor (``run_in_sandbox``, the hardened defaults a
worker uses) alternately without a live sink (capture only: the result keeps the
first ``stream_cap_bytes``) and with the node's sink (``worker.node.livefeed``: every
byte appended to the job's Redis stream on a private ``redis-server``), so both are
measured in one run on the same machine state. Two shapes of printing: ``lines``, a
``print`` per 100-byte line (the job's stdout is unbuffered, so one write each: the
most hand-overs per byte), and ``blocks``, 64 KiB writes. Reported: the medians of
the job's own wall time (what a slower pipe reader would slow down) and of the whole
call (``run_in_sandbox`` and, streaming, the sink's ``end``, which a worker waits for
before it stores the result), and streaming/capture-only ratios (the bar: 1.10). Each
job is run as a worker runs it: ``warm_next=False``, the sink's end, then the next job's
sandbox pre-started (``prestart_pending``, which a worker calls once the result is
stored, outside the call), so that both kinds of job wait alike for their sandbox and
no pre-start overlaps the stream's writes.

Run: ``.venv/bin/python benchmarks/logs.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from benchmarks.sandbox import bench_broker  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.models import Job  # noqa: E402
from worker.node.livefeed import JobFeed  # noqa: E402
from worker.sandbox.executor import (  # noqa: E402
    SandboxConfig,
    prestart_pending,
    release_slots,
    run_in_sandbox,
)
from worker.stores.livelogs import LiveLog, live_key  # noqa: E402

SHAPES = {
    "lines": "import sys\nline = 'x' * 99\nfor _ in range({n} // 100):\n    print(line)\n",
    "blocks": ("import sys\nblock = b'x' * 65536\nfor _ in range({n} // 65536):\n"
               "    sys.stdout.buffer.write(block)\n"),
}


def one(code: str, config: SandboxConfig, live: LiveLog | None) -> tuple[float, float, int]:
    """The job's wall time, the call's, and the bytes streamed (0: capture only)."""
    job = Job(code=code, timeout=120)
    feed = JobFeed(live, job.id, None, None) if live is not None else None
    started = time.perf_counter()
    run = run_in_sandbox(job, config, warm_next=False, live=feed)
    if feed is not None:
        feed.end()  # as the worker does before it stores the result: part of the call
    took = time.perf_counter() - started
    if run.outcome != "completed":
        raise SystemExit(f"the benchmark job did not complete: {run.outcome} {run.error}")
    streamed = 0
    if live is not None:
        entries = live.client.xrange(live_key(job.id))
        streamed = sum(len(fields.get(b"d", b"")) for _, fields in entries)
        live.client.delete(live_key(job.id))
    # As the worker does once the result is stored, and last: every job then goes as
    # soon after its sandbox's pre-start (a streamed one's reading back its stream
    # would give the next job's sandbox longer to settle than a capture-only one's).
    prestart_pending()
    return run.wall_seconds, took, streamed


def compare(shape: str, size: int, rounds: int, live: LiveLog, workdir: Path) -> None:
    config = SandboxConfig(workdir_root=str(workdir))  # no other process sweeps it
    code = SHAPES[shape].format(n=size)
    one(code, config, None)  # the first job pays for the warm sandbox and the imports
    plain: list[tuple[float, float]] = []
    streamed: list[tuple[float, float]] = []
    sent = 0
    for _ in range(rounds):
        wall, call, _ = one(code, config, None)
        plain.append((wall, call))
        wall, call, sent = one(code, config, live)
        streamed.append((wall, call))
    print(f"\n{shape}: a job printing {size / 1e6:.0f} MB, {rounds} rounds each, "
          f"alternating; {sent / 1e6:.1f} MB reached the stream per streamed job; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'median':<22}{'capture only':>14}{'streaming':>12}{'ratio':>8}")
    for index, name in ((0, "job wall time"), (1, "whole call")):
        base = statistics.median(sample[index] for sample in plain)
        with_live = statistics.median(sample[index] for sample in streamed)
        print(f"{name:<22}{base:>12.3f} s{with_live:>10.3f} s{with_live / base:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    opts = parser.parse_args()
    configure_logging("warning")
    size, rounds = (2_000_000, 3) if opts.quick else (10_000_000, 15)
    with tempfile.TemporaryDirectory(prefix="sandrun-bench-") as tmp:
        os.chmod(tmp, 0o755)  # job users pass through it to their directories
        with bench_broker(Path(tmp)) as (url, _):
            client = redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
            live = LiveLog(client)
            try:
                for shape in SHAPES:
                    compare(shape, size, rounds, live, Path(tmp))
            finally:
                client.close()
                release_slots()  # unmount the slot's disk before its directory goes


if __name__ == "__main__":
    main()
