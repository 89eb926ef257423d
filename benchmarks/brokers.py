"""No-op throughput and submit-to-result latency on RabbitMQ beside Redis, in one run.

The same Sandrun app and no-op task, the same pool (prefork) and concurrency, on
two stacks started here: a private ``redis-server`` alone (broker and results),
and a ``rabbitmq-server`` node of this run's own (quorum queue, publisher confirms,
persistent messages) with a second private Redis for results. Alternating rounds
of N jobs (published, then every result awaited) print jobs/s per broker and the
ratio, and the broker's own CPU per job (redis-server's INFO, the RabbitMQ node's
process group from /proc; the RabbitMQ stack's result Redis apart), from which the
jobs/s one broker core would carry follows; then one job at a time gives the
submit-to-result p50/p99 of each.

Run: ``.venv/bin/python benchmarks/brokers.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import latency, throughput  # noqa: E402
from benchmarks.sandbox import bench_broker, percentiles, start, stop  # noqa: E402
from tests.support.rabbit import own_rabbit  # noqa: E402

#: The broker processes of each stack, read for their CPU (set by :func:`stacks`).
BROKERS: dict[str, Callable[[], float]] = {}


def redis_cpu(url: str) -> Callable[[], float]:
    """CPU seconds a redis-server has used so far (its INFO)."""
    import redis

    from worker.broker.urls import redis_url as plain

    client = redis.Redis.from_url(plain(url))

    def read() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return read


def group_cpu(pgrp: int) -> Callable[[], float]:
    """CPU seconds the processes of process group ``pgrp`` have used so far."""
    def read() -> float:
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rpartition(")")[2].split()
                if int(fields[2]) == pgrp:
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
    return read


@contextlib.contextmanager
def stacks(tmp: Path) -> Iterator[dict[str, dict[str, str]]]:
    """Both stacks, as the environment of each one's worker; stopped afterwards."""
    with contextlib.ExitStack() as resources:
        redis_url, env = resources.enter_context(bench_broker(tmp / "redis"))
        results_url, _ = resources.enter_context(bench_broker(tmp / "results"))
        node = resources.enter_context(own_rabbit(tmp / "rabbit"))
        assert node.process is not None
        BROKERS.update(redis=redis_cpu(redis_url), rabbitmq=group_cpu(node.process.pid),
                       results=redis_cpu(results_url))
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
        cpu: dict[str, list[float]] = {"redis": [], "rabbitmq": [], "results": []}
        print(f"{'round':>5} {'redis jobs/s':>13} {'rabbitmq jobs/s':>16} {'ratio':>6}")
        for i in range(rounds):
            before = BROKERS["redis"]()
            a = throughput(sends["redis"], per_round)
            cpu["redis"].append((BROKERS["redis"]() - before) / per_round)
            before, results = BROKERS["rabbitmq"](), BROKERS["results"]()
            b = throughput(sends["rabbitmq"], per_round)
            cpu["rabbitmq"].append((BROKERS["rabbitmq"]() - before) / per_round)
            cpu["results"].append((BROKERS["results"]() - results) / per_round)
            ratios.append(b / a)
            print(f"{i + 1:>5} {a:>13.0f} {b:>16.0f} {b / a:>6.2f}")
        print(f"median ratio rabbitmq/redis {statistics.median(ratios):.2f} over {rounds} "
              f"rounds of {per_round} no-op jobs, concurrency {concurrency}")
        for name, label in (("redis", "redis-server (broker and results)"),
                            ("rabbitmq", "RabbitMQ node (broker only)"),
                            ("results", "its result redis-server")):
            ms = 1000 * statistics.median(cpu[name])
            carry = f"{1000 / ms:,.0f} jobs/s per core" if ms > 0 else "not measurable"
            print(f"broker CPU per no-op job, {label:<34} {ms:6.3f} ms  ({carry})")
        sandboxed(tmp, envs, concurrency, jobs=max(10, per_round // 10), workers=workers)
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


def sandboxed(tmp: Path, envs: dict[str, dict[str, str]], concurrency: int, *, jobs: int,
              workers: list[Any]) -> None:
    """The broker's CPU per sandboxed ``print(1)`` job: a Sandrun worker per stack (its
    default queue and plugins, the hardened sandbox), ``jobs`` submitted and awaited."""
    from worker.client.client import Sandrun

    common = ["-c", str(concurrency), "--without-mingle", "--without-gossip", "-l", "info"]
    print(f"{'sandboxed print(1)':<26} {'jobs/s':>7} {'broker CPU/job':>15} {'per core':>10}")
    for name, env in envs.items():
        workers.append(start([sys.executable, "-m", "celery", "-A", "worker", "worker",
                              "-n", f"sandboxed-{name}@%h", *common], env,
                             tmp / f"{name}-sandboxed.log"))
        with Sandrun.create(broker_url=env["SANDRUN_BROKER_URL"],
                            result_backend=env["SANDRUN_RESULT_BACKEND"], plugins=[]) as client:
            for run in [client.job().code("print(1)").submit() for _ in range(4)]:
                run.wait(60)  # warm: the worker's first jobs, queue declarations
            before, started = BROKERS[name](), time.perf_counter()
            for run in [client.job().code("print(1)").submit() for _ in range(jobs)]:
                run.wait(120)
            took, used = time.perf_counter() - started, BROKERS[name]() - before
        ms = 1000 * used / jobs
        print(f"{name:<26} {jobs / took:>7.1f} {ms:>12.3f} ms {1000 / ms if ms else 0:>10,.0f}")


if __name__ == "__main__":
    main()
