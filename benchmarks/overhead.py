"""Throughput and latency cost of Sandrun's task layer and its three operational plugins.

The same no-op task run by a worker of a bare Celery app and by a worker of the
Sandrun app with ``retry``, ``metrics`` and ``logging`` loaded (JSON logs to a
file), on the same private ``redis-server``, same pool (prefork) and
concurrency, in alternating rounds of N jobs. Both apps use ``celeryconfig``
(late acks, events, ...), so the difference is Sandrun's own code. Prints jobs/s
for each and the ratio per round, the median ratio, and the submit-to-result
latency p50/p99 of one job at a time for both.

Run: ``.venv/bin/python benchmarks/overhead.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sandbox import bench_broker, percentiles, start, stop  # noqa: E402


def throughput(send: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    handles = [send() for _ in range(n)]
    for handle in handles:
        handle.get(timeout=120)  # type: ignore[attr-defined]
    return n / (time.perf_counter() - started)


def latency(send: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        send().get(timeout=30)  # type: ignore[attr-defined]
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--concurrency", type=int, default=2)
    opts = parser.parse_args()
    rounds, per_round, singles = (2, 50, 20) if opts.quick else (6, 400, 300)
    for name in [k for k in os.environ if k.startswith("SANDRUN_")]:
        del os.environ[name]  # this benchmark configures both apps itself
    with tempfile.TemporaryDirectory(prefix="sandrun-overhead-") as tmp_dir:
        tmp = Path(tmp_dir)
        with bench_broker(tmp) as (_, env):
            compare(tmp, env, opts.concurrency, rounds=rounds, per_round=per_round,
                    singles=singles)


def compare(tmp: Path, env: dict[str, str], concurrency: int, *, rounds: int, per_round: int,
            singles: int) -> None:
    """Start both workers, alternate throughput rounds, then measure single-job latency."""
    plugins = [{"name": "retry"}, {"name": "metrics", "config": {"port": 0}},
               {"name": "logging", "config": {"format": "json",
                                              "outputs": [str(tmp / "worker.jsonl")]}}]
    common = ["-c", str(concurrency), "--without-mingle", "--without-gossip", "-l", "info"]
    workers = []
    try:
        workers.append(start([sys.executable, "-m", "celery", "-A",
                              "benchmarks.noop_apps:bare", "worker", "-Q", "bare", *common],
                             env, tmp / "bare.log"))
        ours_env = {**env, "SANDRUN_PLUGINS": json.dumps(plugins)}
        workers.append(start([sys.executable, "-m", "celery", "-A",
                              "benchmarks.noop_apps:ours", "worker", "-Q", "ours", *common],
                             ours_env, tmp / "ours.log", ready_in=tmp / "worker.jsonl"))
        from benchmarks.noop_apps import bare, ours

        def send_bare() -> object:
            return bare.send_task("bench.noop", queue="bare")

        def send_ours() -> object:
            return ours.send_task("bench.noop", queue="ours")

        for send in (send_bare, send_ours):
            throughput(send, 20)
        ratios = []
        print(f"{'round':>5} {'bare jobs/s':>12} {'sandrun jobs/s':>15} {'ratio':>6}")
        for i in range(rounds):
            a, b = throughput(send_bare, per_round), throughput(send_ours, per_round)
            ratios.append(b / a)
            print(f"{i + 1:>5} {a:>12.0f} {b:>15.0f} {b / a:>6.2f}")
        print(f"median ratio {statistics.median(ratios):.2f} over {rounds} rounds of "
              f"{per_round} jobs, concurrency {concurrency}")
        lat_bare, lat_ours = latency(send_bare, singles), latency(send_ours, singles)
        print(f"latency bare Celery no-op:       {percentiles(lat_bare)}")
        extra = 1000 * (statistics.median(lat_ours) - statistics.median(lat_bare))
        print(f"latency sandrun + 3 plugins:     {percentiles(lat_ours)}   (p50 {extra:+.2f} ms)")
    finally:
        for proc in workers:
            stop(proc)

if __name__ == "__main__":
    main()
