"""Latency a 2-of-3 consensus job adds over a plain job, on an idle fleet.

Three Sandrun workers (prefork, one pool process each, the ``consensus`` plugin
loaded, the sandbox as this host gives it) on a private ``redis-server``. One job at a
time, alternating a plain ``print(1)`` job and the same job with ``consensus="2-of-3"``
(three replicas on the three workers, a vote, the final result under the job's id).
Prints submit-to-result p50/p99 of each, the time ``submit`` itself takes for each
(a consensus submit also looks the fleet up: the registry, then a ping), and the p50
difference and ratio.

Run: ``.venv/bin/python benchmarks/consensus.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sandbox import bench_broker, percentiles, start, stop  # noqa: E402

WORKERS = 3


def measure(count: int, tmp: Path) -> None:
    """Start the fleet, warm it up, then time ``count`` jobs of each kind, alternating."""
    from worker.client.client import Sandrun
    from worker.models import Job

    plugins = json.dumps(["consensus"])
    # Job directories of their own: a worker sweeps its jobs root when it starts, and other
    # fleets on this host (tests, other benchmarks) must not sweep these workers' jobs.
    tmp.chmod(0o711)
    workdirs = tmp / "work"
    workdirs.mkdir(mode=0o711)
    common = ["-c", "1", "--without-mingle", "--without-gossip", "-l", "info"]
    procs: list[subprocess.Popen[bytes]] = []
    with bench_broker(tmp) as (url, env):
        try:
            for i in range(WORKERS):
                procs.append(start([sys.executable, "-m", "celery", "-A", "worker", "worker",
                                    "-n", f"c{i}@%h", *common],
                                   {**env, "SANDRUN_PLUGINS": plugins,
                                    "SANDRUN_WORKDIR_ROOT": str(workdirs)}, tmp / f"c{i}.log"))
            with Sandrun.create(broker_url=url, plugins=[]) as client:
                kinds = {"plain print(1)": "none", "2-of-3 print(1)": "2-of-3"}
                total: dict[str, list[float]] = {name: [] for name in kinds}
                submit: dict[str, list[float]] = {name: [] for name in kinds}
                for round_ in range(count + 3):  # the first 3 rounds warm the fleet up
                    for name, level in kinds.items():
                        started = time.perf_counter()
                        run = client.submit(Job(code="print(1)", consensus=level))
                        sent = time.perf_counter()
                        result = run.wait(60)
                        done = time.perf_counter()
                        if result.status != "completed":
                            raise SystemExit(f"{name} ended {result.status}: {result.error}"
                                             + "".join(f"\n  {r.id}: {r.result()}"
                                                       for r in map(client.execution,
                                                                    run.replicas)))
                        if round_ >= 3:
                            total[name].append(done - started)
                            submit[name].append(sent - started)
            for name in kinds:
                print(f"submit to result  {name:<16} {percentiles(total[name])}   "
                      f"(submit alone p50 {statistics.median(submit[name]) * 1000:.1f} ms, "
                      f"n={count})")
            plain, replicated = (statistics.median(total[n]) for n in kinds)
            print(f"added by 2-of-3   p50 {(replicated - plain) * 1000:+.1f} ms   "
                  f"ratio {replicated / plain:.2f}x")
        finally:
            for proc in procs:
                stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few jobs (smoke test)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sandrun-consensus-") as tmp:
        measure(5 if opts.quick else 60, Path(tmp))


if __name__ == "__main__":
    main()
