"""Horizontal scaling: 200 I/O-bound jobs on 1, 2 and 4 worker processes, one broker.

Each job is a sandboxed Python job that sleeps 0.1 s. For 1, 2 and 4 separate
``celery worker -c 1`` processes on the same private ``redis-server``, it submits
the jobs, waits for all of them, and prints throughput and efficiency against the
ideal (N times the one-process throughput). A second table does the same with a
user task that sleeps 0.1 s in the pool process (no sandbox), which isolates the
broker and Celery from the cost of starting an interpreter per job.

Run: ``.venv/bin/python benchmarks/scaling.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sandbox import bench_broker, start, stop  # noqa: E402


def run_batch(submit: Callable[[], Callable[[], object]], count: int) -> float:
    started = time.perf_counter()
    waits = [submit() for _ in range(count)]
    for wait in waits:
        wait()
    return time.perf_counter() - started


def measure(kind: str, url: str, env: dict[str, str], tmp: Path, *, counts: tuple[int, ...],
            jobs: int) -> None:
    from worker.client.client import Sandrun

    with Sandrun.create(broker_url=url, plugins=[]) as client:
        def submit() -> Callable[[], object]:
            if kind == "sandbox":
                run = client.job().code("import time; time.sleep(0.1)").submit()
                return lambda: run.wait(120)
            handle = client.app.send_task("bench.sleep", args=[0.1])
            return lambda: handle.get(timeout=120)

        print(f"\n{kind} jobs (sleep 0.1 s), {jobs} per run")
        print(f"{'workers':>7} {'seconds':>8} {'jobs/s':>7} {'ideal':>7} {'efficiency':>10}")
        base = 0.0
        for n in counts:
            workers = [start([sys.executable, "-m", "celery", "-A", "benchmarks.noop_apps:ours",
                              "worker", "-c", "1", "-n", f"scale{i}-{n}@%h",
                              "--without-mingle", "--without-gossip", "-l", "info"],
                             env, tmp / f"{kind}-{n}-{i}.log") for i in range(n)]
            try:
                run_batch(submit, 2 * n)  # warm-up: every worker has started a job
                seconds = run_batch(submit, jobs)
            finally:
                for proc in workers:
                    stop(proc)
            rate = jobs / seconds
            base = base or rate
            print(f"{n:>7} {seconds:>8.2f} {rate:>7.1f} {base * n:>7.1f} "
                  f"{rate / (base * n):>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 jobs, 1 and 2 workers")
    opts = parser.parse_args()
    counts, jobs = ((1, 2), 40) if opts.quick else ((1, 2, 4), 200)
    for name in [k for k in os.environ if k.startswith("SANDRUN_")]:
        del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="sandrun-scaling-") as tmp_dir:
        tmp = Path(tmp_dir)
        with bench_broker(tmp) as (url, env):
            for kind in ("sandbox", "task"):
                measure(kind, url, env, tmp, counts=counts, jobs=jobs)

if __name__ == "__main__":
    main()
