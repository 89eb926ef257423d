"""Sandbox overhead and submit-to-result latency.

1. A ``print(1)`` Python job through the executor (``run_in_sandbox``) against
   plain ``subprocess.run`` of the same interpreter and code, alternating in
   this process: medians and the differences, for the hardened defaults (view,
   uid slot, no network, seccomp, cgroup, tmpfs disk) and for the layers the
   sandbox had before them (Landlock and a user namespace, jobs as ``nobody``),
   cold (bwrap started per job) and warm (the view pre-started, ``worker.sandbox.warm``,
   with a shell or with the job's interpreter, ``worker.sandbox.warmpython``, waiting in
   it): a warm call is timed alone, its box pre-started untimed before it (in a worker
   the pre-start runs after the result is stored).
2. Submit-to-result latency of that job through a private ``redis-server`` and
   one idle ``celery worker`` (prefork, concurrency 1): p50, p90 and p99, next to the
   no-op round trip of the bare Celery app in ``benchmarks/noop_apps.py`` and the same
   job through a worker whose running leases are off (``SANDRUN_RUNNING_LEASE_SECONDS=0``:
   what a job's lease costs); with
   ``--baseline DIR`` (a checkout of an earlier commit, its ``make install`` done
   or not: it runs with this interpreter) also through that code's worker,
   alternating job by job, so both are measured in one run; each trip starts
   ``--gap`` seconds after the last ended (default 0.03), so that no worker is still
   pre-starting its next sandbox on the shared cores when another's trip starts.
3. Jobs per second: the same job drained through a ``-c 2`` worker (and the baseline's),
   beside ``subprocess.run`` of it from two threads (the box's physical limit).

Run: ``.venv/bin/python benchmarks/sandbox.py`` (``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.logs import configure_logging  # noqa: E402
from worker.models import Job  # noqa: E402
from worker.sandbox.executor import (  # noqa: E402
    SandboxConfig,
    prestart_pending,
    run_in_sandbox,
)
from worker.sandbox.isolation import job_user_ids, probe  # noqa: E402
from worker.sandbox.launcher import dying_with_parent  # noqa: E402
from worker.sandbox.plan import Policy  # noqa: E402
from worker.sandbox.prepare import BASE_PATH  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def unhardened() -> SandboxConfig:
    """The layers the sandbox had before the built view: Landlock, a user namespace,
    jobs as ``nobody``, RLIMIT_AS, the host's network."""
    support = replace(probe(job_user_ids("nobody")), view=False, seccomp=False, cgroup=None)
    return SandboxConfig(job_uids=None, disk_bytes=0, support=support,
                         policy=Policy(network="off", seccomp="off", cgroups="off"))


def executor_overhead(rounds: int) -> None:
    python = shutil.which("python3", path=BASE_PATH) or "python3"
    job = Job(code="print(1)")
    configs = {"before the view": unhardened(), "hardened, cold": SandboxConfig(warm=False),
               "hardened, warm shell": SandboxConfig(warm_python=False),
               "hardened, warm python": SandboxConfig()}
    labels = {name: run_in_sandbox(job, config).isolation for name, config in configs.items()}
    plain: list[float] = []
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        plain.append(timed(lambda: subprocess.run([python, "-c", "print(1)"],
                                                  capture_output=True, check=True)))
        for name, config in configs.items():
            if config.warm:  # a box built for this config (the last call's was for another)
                run_in_sandbox(job, config, warm_next=False)
                prestart_pending()
                time.sleep(0.05)  # ready, as between a worker's jobs
            runs[name].append(timed(lambda config=config: run_in_sandbox(
                job, config, warm_next=False)))
    base = statistics.median(plain) * 1000
    print(f"executor print(1), medians of {rounds}: subprocess.run {base:6.1f} ms")
    for name, samples in runs.items():
        ms = statistics.median(samples) * 1000
        print(f"  run_in_sandbox {name:<21} {ms:6.1f} ms   difference {ms - base:+5.1f} ms   "
              f"({labels[name]})")


def start(argv: list[str], env: dict[str, str], log: Path,
          ready_in: Path | None = None, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start a worker and wait for its ready line (in ``ready_in`` when it logs to a file)."""
    proc = subprocess.Popen(dying_with_parent(argv), env=env, cwd=cwd,
                            stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    watched = ready_in or log
    while not watched.exists() or " ready." not in watched.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p90, p99 = (ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 for q in (0.9, 0.99))
    return f"p50 {p50:6.1f} ms   p90 {p90:6.1f} ms   p99 {p99:6.1f} ms"


@contextlib.contextmanager
def bench_broker(tmp: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A private redis-server in ``tmp``: yields its URL and the environment for workers
    (no ``SANDRUN_*`` from the caller's environment), and stops it afterwards."""
    sock = tmp / "r.sock"
    redis = subprocess.Popen(dying_with_parent(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no"]), stdout=subprocess.DEVNULL)
    url = f"redis+socket://{sock}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDRUN_")}
    env.update(SANDRUN_BROKER_URL=url, SANDRUN_STATE_DIR=str(tmp), BARE_BROKER_URL=url,
               PYTHONPATH=str(ROOT))
    os.environ.update(BARE_BROKER_URL=url, SANDRUN_BROKER_URL=url)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if redis.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the private redis-server did not start")
            time.sleep(0.02)
        yield url, env
    finally:
        redis.terminate()
        redis.wait()


def latency(count: int, tmp: Path, baseline: Path | None, gap: float = 0.03) -> None:
    from worker.client.client import Sandrun

    common = ["-c", "1", "--without-mingle", "--without-gossip", "-l", "info"]
    procs: list[subprocess.Popen[bytes]] = []
    with bench_broker(tmp) as (url, env):
        try:
            procs.append(start([sys.executable, "-m", "celery", "-A", "worker", "worker",
                                *common], env, tmp / "ours.log"))
            procs.append(start([sys.executable, "-m", "celery", "-A", "benchmarks.noop_apps:bare",
                                "worker", "-Q", "bare", *common], env, tmp / "bare.log"))
            procs.append(start([sys.executable, "-m", "celery", "-A", "worker", "worker",
                                "-Q", "nolease", *common],
                               {**env, "SANDRUN_RUNNING_LEASE_SECONDS": "0"},
                               tmp / "nolease.log"))
            if baseline is not None:
                procs.append(start([sys.executable, "-m", "celery", "-A", "worker", "worker",
                                    "-Q", "baseline", *common],
                                   {**env, "PYTHONPATH": str(baseline)}, tmp / "base.log",
                                   cwd=baseline))
            from benchmarks.noop_apps import bare as bare_app

            with Sandrun.create(broker_url=url, plugins=[]) as client:
                runs: dict[str, Callable[[], object]] = {
                    "sandrun print(1) job": lambda: client.job().code("print(1)").submit()
                    .wait(30),
                    "same, running leases off": lambda: client.job().code("print(1)")
                    .queue("nolease").submit().wait(30),
                    "bare Celery no-op": lambda: bare_app.send_task(
                        "bench.noop", queue="bare").get(timeout=30)}
                if baseline is not None:
                    runs[f"baseline {baseline.name} print(1)"] = lambda: client.job().code(
                        "print(1)").queue("baseline").submit().wait(30)
                for _ in range(5):
                    for run in runs.values():
                        run()
                samples: dict[str, list[float]] = {name: [] for name in runs}
                for _ in range(count):
                    for name, run in runs.items():
                        time.sleep(gap)
                        samples[name].append(timed(run))
            for name, values in samples.items():
                print(f"round trip {name:<32} {percentiles(values)}   (n={count})")
        finally:
            for proc in procs:
                stop(proc)


def drain_rate(count: int, tmp: Path, baseline: Path | None) -> None:
    """Sandboxed ``print(1)`` jobs per second through a ``-c 2`` worker (and the
    baseline's, on its own queue), beside ``subprocess.run`` of the same interpreter and
    code from two threads (the most this box does without any sandbox, broker or Celery);
    each measured twice, alternating, with one worker started at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.client.client import Sandrun

    python = shutil.which("python3", path=BASE_PATH) or "python3"

    def plain() -> float:
        with ThreadPoolExecutor(2) as pool:
            started = time.perf_counter()
            list(pool.map(lambda _: subprocess.run([python, "-c", "print(1)"],
                                                   capture_output=True, check=True),
                          range(count)))
            return count / (time.perf_counter() - started)

    def sandboxed(url: str, env: dict[str, str], queue: str, code: Path) -> float:
        proc = start([sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", "2",
                      "-Q", queue, "--without-mingle", "--without-gossip", "-l", "info"],
                     {**env, "PYTHONPATH": str(code)}, tmp / f"drain-{queue}.log", cwd=code)
        try:
            with Sandrun.create(broker_url=url, plugins=[]) as client:
                for run in [client.job().code("print(1)").queue(queue).submit()
                            for _ in range(4)]:
                    run.wait(30)
                started = time.perf_counter()
                runs = [client.job().code("print(1)").queue(queue).submit()
                        for _ in range(count)]
                for run in runs:
                    run.wait(60)
                return count / (time.perf_counter() - started)
        finally:
            stop(proc)

    rates: dict[str, list[float]] = {"subprocess.run x2 threads": []}
    with bench_broker(tmp) as (url, env):
        for _ in range(2):
            rates["subprocess.run x2 threads"].append(plain())
            rates.setdefault("sandrun -c 2", []).append(sandboxed(url, env, "sandrun", ROOT))
            if baseline is not None:
                rates.setdefault(f"baseline {baseline.name} -c 2", []).append(
                    sandboxed(url, env, "baseline", baseline))
    limit = statistics.median(rates["subprocess.run x2 threads"])
    for name, values in rates.items():
        each = " ".join(f"{v:6.1f}" for v in values)
        print(f"drain {count} print(1): {name:<28} {each} /s   ratio to subprocess.run "
              f"{statistics.median(values) / limit:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of earlier code whose worker is measured alongside")
    parser.add_argument("--gap", type=float, default=0.03,
                        help="seconds between round trips (0: back to back)")
    opts = parser.parse_args()
    configure_logging("warning")
    executor_overhead(5 if opts.quick else 60)
    with tempfile.TemporaryDirectory(prefix="sandrun-bench-") as tmp:
        latency(10 if opts.quick else 200, Path(tmp), opts.baseline, opts.gap)
    with tempfile.TemporaryDirectory(prefix="sandrun-bench-") as tmp:
        drain_rate(20 if opts.quick else 300, Path(tmp), opts.baseline)


if __name__ == "__main__":
    main()
