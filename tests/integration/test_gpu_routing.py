"""GPU jobs go to GPU queues; a CPU-only worker never takes one."""

from __future__ import annotations

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import WorkerFactory, broker_url
from worker.client.client import Sandrun

pytestmark = pytest.mark.slow

SHOW_DEVICES = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"


def waiting(broker: RedisServer, queue: str) -> int:
    """Messages waiting in the broker for ``queue`` (kombu keeps a list per priority step)."""
    client = broker.client()
    steps = [key for key in client.scan_iter(f"{queue}*", _type="list")
             if key == queue.encode() or key.startswith(f"{queue}\x06\x16".encode())]
    return sum(int(client.llen(key)) for key in steps)


def test_gpu_job_waits_for_a_gpu_worker(start_worker: WorkerFactory,
                                        broker: RedisServer) -> None:
    cpu = start_worker(name="cpu", concurrency=1, cli=True)
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        gpu_run = client.job().code(SHOW_DEVICES).gpu("t4").submit()
        cpu_result = client.job().code(SHOW_DEVICES).submit().wait(timeout=30)
        assert cpu_result.stdout == "\n"
        assert cpu_result.execution and cpu_result.execution.node_id.startswith("cpu@")
        # The -c 1 CPU worker was idle when the GPU job was published before the CPU one:
        # had it consumed the GPU queue, it would have taken that job first.
        assert gpu_run.status() == "queued" and waiting(broker, "sandrun.gpu.t4") == 1

        gpu = start_worker(name="gpu", concurrency=1, cli=True,
                           SANDRUN_GPUS='[{"type": "t4", "count": 2}]')
        result = gpu_run.wait(timeout=30)
        assert result.status == "completed" and result.stdout.strip() in {"0", "1"}
        assert result.execution and result.execution.node_id.startswith("gpu@")
        assert result.execution.gpu_type == "t4"
        assert "sandrun.gpu.t4" in gpu.output() and "sandrun.gpu" not in cpu.output()

        other = client.job().code(SHOW_DEVICES).gpu("a100").submit()
        # A t4 job published after it runs on the idle -c 1 GPU worker, which would have
        # taken the a100 job first if it consumed that queue; the CPU worker idles too.
        later = client.job().code(SHOW_DEVICES).gpu("t4").submit().wait(timeout=30)
        assert later.execution and later.execution.node_id.startswith("gpu@")
        assert other.status() == "queued" and waiting(broker, "sandrun.gpu.a100") == 1
        other.cancel()


def test_gpu_worker_refuses_a_job_its_cards_cannot_hold(start_worker: WorkerFactory,
                                                       broker: RedisServer) -> None:
    start_worker(name="small", concurrency=1, cli=True,
                 SANDRUN_GPUS='[{"type": "l4", "memory_mb": 16000}]')
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as client:
        result = client.job().code("print(1)").gpu("l4", min_vram_gb=40).submit().wait(30)
    assert (result.status, result.outcome) == ("failed", "unsatisfiable")
