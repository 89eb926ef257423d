"""Sandbox overhead and submit-to-result latency.

1. A ``print(1)`` Python job through the executor (``run_in_sandbox``) against
   plain ``subprocess.run`` of the same interpreter and code, alternating in
   this process: medians and the difference.
2. Submit-to-result latency of that job through a private ``redis-server`` and
   one idle ``celery worker`` (prefork, concurrency 1): p50 and p99, next to the
   no-op round trip of the bare Celery app in ``benchmarks/noop_apps.py``.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.logs import configure_logging  # noqa: E402
from worker.models import Job  # noqa: E402
from worker.sandbox.executor import BASE_PATH, run_in_sandbox  # noqa: E402
from worker.sandbox.launcher import dying_with_parent  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def executor_overhead(rounds: int) -> None:
    python = shutil.which("python3", path=BASE_PATH) or "python3"
    job = Job(code="print(1)")
    plain, sandboxed = [], []
    for _ in range(rounds):
        plain.append(timed(lambda: subprocess.run([python, "-c", "print(1)"],
                                                  capture_output=True, check=True)))
        sandboxed.append(timed(lambda: run_in_sandbox(job)))
    a, b = statistics.median(plain) * 1000, statistics.median(sandboxed) * 1000
    print(f"executor   print(1): subprocess.run {a:6.1f} ms   run_in_sandbox {b:6.1f} ms   "
          f"difference {b - a:+5.1f} ms   (medians of {rounds})")


def start(argv: list[str], env: dict[str, str], log: Path,
          ready_in: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a worker and wait for its ready line (in ``ready_in`` when it logs to a file)."""
    proc = subprocess.Popen(dying_with_parent(argv), env=env, cwd=ROOT,
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
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:6.1f} ms   p99 {p99:6.1f} ms"


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


def latency(count: int, tmp: Path) -> None:
    from worker.client.client import Sandrun

    common = ["-c", "1", "--without-mingle", "--without-gossip", "-l", "info"]
    ours = bare = None
    with bench_broker(tmp) as (url, env):
        try:
            ours = start([sys.executable, "-m", "celery", "-A", "worker", "worker", *common],
                         env, tmp / "ours.log")
            bare = start([sys.executable, "-m", "celery", "-A", "benchmarks.noop_apps:bare",
                          "worker", "-Q", "bare", *common], env, tmp / "bare.log")
            from benchmarks.noop_apps import bare as bare_app

            with Sandrun.create(broker_url=url, plugins=[]) as client:
                for _ in range(5):
                    client.job().code("print(1)").submit().wait(30)
                    bare_app.send_task("bench.noop", queue="bare").get(timeout=30)
                sandrun_s, bare_s = [], []
                for _ in range(count):
                    sandrun_s.append(timed(lambda: client.job().code("print(1)").submit()
                                           .wait(30)))
                    bare_s.append(timed(lambda: bare_app.send_task("bench.noop", queue="bare")
                                        .get(timeout=30)))
            print(f"round trip sandrun print(1) job: {percentiles(sandrun_s)}   (n={count})")
            print(f"round trip bare Celery no-op:    {percentiles(bare_s)}   (n={count})")
        finally:
            for proc in (ours, bare):
                if proc is not None:
                    stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    opts = parser.parse_args()
    configure_logging("warning")
    executor_overhead(5 if opts.quick else 60)
    with tempfile.TemporaryDirectory(prefix="sandrun-bench-") as tmp:
        latency(10 if opts.quick else 200, Path(tmp))


if __name__ == "__main__":
    main()
