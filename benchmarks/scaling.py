"""Horizontal scaling: 200 I/O-bound jobs on 1, 2 and 4 worker processes, one broker.

Each job is a sandboxed Python job that sleeps 0.1 s. For 1, 2 and 4 separate
``celery worker -c 1`` processes on the same private ``redis-server``, it submits
the jobs, waits for all of them, and prints throughput and efficiency against the
ideal (N times the one-process throughput). A second table does the same with a
user task that sleeps 0.1 s in the pool process (no sandbox), which isolates the
broker and Celery from the cost of starting an interpreter per job.

``--hosts`` (root, Debian ``iproute2``) measures across test hosts instead
(``tests.support.fleet``: network namespaces joined by veth pairs) with jobs that sleep
``--sleep`` seconds (0.1): the Redis runs on
the broker host and 1, 2, then 3 worker hosts run one ``celery worker -c 1`` each,
whose broker, results and stores all cross their host's link (the producer submits
over a unix socket). Besides efficiency it prints the broker's CPU share at each step
(the redis-server's user+system CPU seconds over the step's wall time, in % of one
core), which is what says when one Redis stops scaling; then the same with a no-op
task (five times as many). That table is bounded by its one producer (one thread that
submits, then waits for each result), not by the workers: read its broker CPU column
(the broker's cost of a job), not its efficiency.

Run: ``.venv/bin/python benchmarks/scaling.py`` (``--quick`` for a short run,
``--hosts`` for the hosts mode).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_workers(fleet: Any, n: int, env: dict[str, str], tmp: Path
                 ) -> list[subprocess.Popen[bytes]]:
    """One ``celery worker -c 1`` in each of the first ``n`` worker hosts of ``fleet``."""
    return [start(host.command([sys.executable, "-m", "celery", "-A", "benchmarks.noop_apps:ours",
                                "worker", "-c", "1", "-n", f"{host.name}-{n}@%h",
                                "--without-mingle", "--without-gossip", "-l", "info"]),
                  {**env, "SANDRUN_STATE_DIR": str(tmp / f"state-{host.name}")},
                  tmp / f"hosts-{n}-{host.name}.log")
            for host in fleet.net.workers[:n]]


def hosts_table(fleet: Any, kind: str, env: dict[str, str], tmp: Path, *,
                counts: tuple[int, ...], jobs: int, sleep: float) -> None:
    """One table: ``kind`` (``sandbox``: sleep jobs; ``noop``: a no-op task) per step."""
    assert fleet.broker.process is not None
    redis_pid = fleet.broker.process.pid

    def submit() -> Callable[[], object]:
        if kind == "sandbox":
            run = fleet.client.job().code(f"import time; time.sleep({sleep})").submit()
            return lambda: run.wait(120)
        handle = fleet.client.app.send_task("bench.noop")
        return lambda: handle.get(timeout=120)

    what = f"sandbox jobs (sleep {sleep:g} s)" if kind == "sandbox" else "no-op tasks"
    print(f"\n{what} across hosts, {jobs} per run")
    print(f"{'hosts':>5} {'seconds':>8} {'jobs/s':>7} {'ideal':>7} {'efficiency':>10} "
          f"{'broker CPU':>10}")
    base = 0.0
    for n in counts:
        workers = host_workers(fleet, n, env, tmp)
        try:
            run_batch(submit, 2 * n)  # warm-up: every worker has started a job
            cpu = cpu_seconds(redis_pid)
            seconds = run_batch(submit, jobs)
            share = (cpu_seconds(redis_pid) - cpu) / seconds
        finally:
            for proc in workers:
                stop(proc)
        rate = jobs / seconds
        base = base or rate
        print(f"{n:>5} {seconds:>8.2f} {rate:>7.1f} {base * n:>7.1f} "
              f"{rate / (base * n):>10.2f} {share:>9.1%}")


def hosts_mode(tmp: Path, *, counts: tuple[int, ...], jobs: int, sleep: float) -> None:
    """Both tables on 1, 2, 3 worker hosts of ``-c 1``, their broker over veth links."""
    from tests.support.fleet import Fleet
    from tests.support.netns import unavailable

    why = unavailable()
    if why:
        raise SystemExit(f"--hosts cannot run here: {why}")
    (tmp / "fleet").mkdir()
    fleet = Fleet(tmp / "fleet", max(counts), ledger="unix")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
        env.update(SANDRUN_BROKER_URL=fleet.url, SANDRUN_RESULT_BACKEND=fleet.url,
                   BARE_BROKER_URL=fleet.url, PYTHONPATH=str(ROOT))
        hosts_table(fleet, "sandbox", env, tmp, counts=counts, jobs=jobs, sleep=sleep)
        hosts_table(fleet, "noop", env, tmp, counts=counts, jobs=5 * jobs, sleep=sleep)
    finally:
        fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 jobs, 1 and 2 workers")
    parser.add_argument("--hosts", action="store_true",
                        help="across 1, 2, 3 test hosts (network namespaces; root)")
    parser.add_argument("--sleep", type=float, default=0.1,
                        help="seconds each --hosts job sleeps (default 0.1)")
    opts = parser.parse_args()
    counts, jobs = ((1, 2), 40) if opts.quick else ((1, 2, 4), 200)
    for name in [k for k in os.environ if k.startswith("SANDRUN_")]:
        del os.environ[name]
    if opts.hosts:
        with tempfile.TemporaryDirectory(prefix="sandrun-scaling-") as tmp_dir:
            hosts_mode(Path(tmp_dir), counts=(1, 2) if opts.quick else (1, 2, 3), jobs=jobs,
                       sleep=opts.sleep)
        return
    with tempfile.TemporaryDirectory(prefix="sandrun-scaling-") as tmp_dir:
        tmp = Path(tmp_dir)
        with bench_broker(tmp) as (url, env):
            for kind in ("sandbox", "task"):
                measure(kind, url, env, tmp, counts=counts, jobs=jobs)

if __name__ == "__main__":
    main()
