"""No-op throughput and submit-to-result latency on RabbitMQ beside Redis, in one run.

The same Sandrun app and no-op task, the same pool (prefork) and concurrency, on
two stacks started here: a private ``redis-server`` alone (broker and results),
and a ``rabbitmq-server`` node of this run's own (quorum queue, publisher confirms,
persistent messages) with a second private Redis for results. Alternating rounds
of N jobs (published, then every result awaited) print jobs/s per broker and the
ratio; then one job at a time gives the submit-to-result p50/p99 of each.

Run: ``.venv/bin/python benchmarks/brokers.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import latency, throughput  # noqa: E402
from benchmarks.sandbox import bench_broker, percentiles, start, stop  # noqa: E402
from tests.support.rabbit import own_rabbit  # noqa: E402


@contextlib.contextmanager
def stacks(tmp: Path) -> Iterator[dict[str, dict[str, str]]]:
    """Both stacks, as the environment of each one's worker; stopped afterwards."""
    with contextlib.ExitStack() as resources:
        redis_url, env = resources.enter_context(bench_broker(tmp / "redis"))
        results_url, _ = resources.enter_context(bench_broker(tmp / "results"))
        node = resources.enter_context(own_rabbit(tmp / "rabbit"))
        yield {"redis": {**env, "SANDRUN_BROKER_URL": redis_url,
                         "SANDRUN_RESULT_BACKEND": redis_url},
               "rabbitmq": {**env, "SANDRUN_BROKER_URL": node.url,
                            "SANDRUN_RESULT_BACKEND": results_url}}


def sender(env: dict[str, str]) -> tuple[Any, Callable[[], object]]:
    """A producer app on a stack, and a function that publishes one no-op job."""
    from worker.broker.factory import make_app

    app = make_app(env["SANDRUN_BROKER_URL"], env["SANDRUN_RESULT_BACKEND"])
    return app, lambda: app.send_task("bench.noop", queue="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--concurrency", type=int, default=2)
    opts = parser.parse_args()
    rounds, per_round, singles = (2, 50, 20) if opts.quick else (5, 400, 300)
    for name in [k for k in os.environ if k.startswith("SANDRUN_")]:
        del os.environ[name]  # this benchmark configures both stacks itself
    with tempfile.TemporaryDirectory(prefix="sandrun-brokers-") as tmp_dir:
        tmp = Path(tmp_dir)
        for part in ("redis", "results"):
            (tmp / part).mkdir()
        with stacks(tmp) as envs:
            compare(tmp, envs, opts.concurrency, rounds=rounds, per_round=per_round,
                    singles=singles)


def compare(tmp: Path, envs: dict[str, dict[str, str]], concurrency: int, *, rounds: int,
            per_round: int, singles: int) -> None:
    """Start a worker per stack, alternate throughput rounds, then single-job latency."""
    common = ["-c", str(concurrency), "--without-mingle", "--without-gossip", "-l", "info"]
    workers, apps = [], []
    try:
        sends = {}
        for name, env in envs.items():
            workers.append(start([sys.executable, "-m", "celery", "-A",
                                  "benchmarks.noop_apps:ours", "worker", "-Q", "bench",
                                  *common], env, tmp / f"{name}.log"))
            app, send = sender(env)
            apps.append(app)
            sends[name] = send
            throughput(send, 20)  # warm up: connections, queue declarations
        ratios = []
        print(f"{'round':>5} {'redis jobs/s':>13} {'rabbitmq jobs/s':>16} {'ratio':>6}")
        for i in range(rounds):
            a, b = throughput(sends["redis"], per_round), throughput(sends["rabbitmq"], per_round)
            ratios.append(b / a)
            print(f"{i + 1:>5} {a:>13.0f} {b:>16.0f} {b / a:>6.2f}")
        print(f"median ratio rabbitmq/redis {statistics.median(ratios):.2f} over {rounds} "
              f"rounds of {per_round} no-op jobs, concurrency {concurrency}")
        lat = {name: latency(send, singles) for name, send in sends.items()}
        for name, samples in lat.items():
            print(f"submit-to-result {name + ':':<10} {percentiles(samples)}")
        extra = 1000 * (statistics.median(lat["rabbitmq"]) - statistics.median(lat["redis"]))
        print(f"p50 rabbitmq - redis: {extra:+.2f} ms ({singles} jobs one at a time)")
    finally:
        for app in apps:
            app.close()
        for proc in workers:
            stop(proc)


if __name__ == "__main__":
    main()
