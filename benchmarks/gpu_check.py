"""What the submit-time GPU check costs: reading the worker registry and matching a
job's requirements against every advertised card.

A private ``redis-server`` holds N registry entries (half 40 GB a100s, half 16 GB t4s,
each with the GPU queues it would consume); the check runs uncached (``ttl=0``: the
first GPU submit of a window, or one after a refusal) and cached (every other submit
of the same queue and requirement within 10 s). Prints the mean of each per N.

Run: ``.venv/bin/python benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sandbox import bench_broker  # noqa: E402


def main() -> None:
    from worker.broker.factory import make_app
    from worker.broker.urls import redis_client
    from worker.client.gpus import GPUCheck
    from worker.models import Job, WorkerInfo
    from worker.models.gpus import GPUCard
    from worker.protocol import gpu_queues, job_queue
    from worker.stores import registry

    a100 = GPUCard(type="a100", vram_gb=40, compute_capability="8.0", cuda_version="12.2")
    t4 = GPUCard(type="t4", vram_gb=16, compute_capability="7.5", cuda_version="12.0")
    job = Job(code="1", gpu={"min_vram_gb": 24, "compute_capability": "8.0"})
    with tempfile.TemporaryDirectory() as tmp, bench_broker(Path(tmp)) as (url, _):
        app, client = make_app(url, url), redis_client(url)
        assert client is not None
        queue = job_queue(job, "sandrun")
        for n in (10, 100, 1000):
            client.flushall()
            for i in range(n):
                cards = [a100 if i % 2 else t4]
                registry.register(client, WorkerInfo(hostname=f"w{i}@h", pid=i, gpus=cards,
                                                     queues=gpu_queues(["sandrun"], cards)))
            uncached, cached = GPUCheck(app, ttl=0), GPUCheck(app)
            rounds = max(10, 1000 // n)
            started = time.perf_counter()
            for _ in range(rounds):
                uncached(job, queue)
            cold = (time.perf_counter() - started) / rounds
            cached(job, queue)
            started = time.perf_counter()
            for _ in range(10_000):
                cached(job, queue)
            warm = (time.perf_counter() - started) / 10_000
            print(f"{n:5d} registered workers: uncached {cold * 1e3:7.2f} ms, "
                  f"cached {warm * 1e6:5.2f} us per submit")


if __name__ == "__main__":
    main()
