from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from worker.models import Job
from worker.models.gpus import GPUCard
from worker.protocol import job_queue
from worker.sandbox.gpu import (
    GPUDevice,
    allocate,
    detect_gpus,
    gpu_type_name,
    suitable,
    worker_queues,
)


@pytest.mark.parametrize(("product", "short"), [
    ("NVIDIA A100-SXM4-40GB", "a100"), ("Tesla T4", "t4"),
    ("NVIDIA GeForce RTX 3090", "rtx3090"), ("NVIDIA H100 80GB HBM3", "h100"),
    ("Quadro RTX 8000", "rtx8000"),
])
def test_type_names(product: str, short: str) -> None:
    assert gpu_type_name(product) == short


def test_queues_for_jobs() -> None:
    assert job_queue(Job(code="1"), "sandrun") == "sandrun"
    assert job_queue(Job(code="1", queue="batch"), "sandrun") == "batch"
    assert job_queue(Job(code="1", gpu={}), "sandrun") == "sandrun.gpu"
    assert job_queue(Job(code="1", gpu={"type": "a100"}, queue="ml"), "s") == "ml.gpu.a100"
    assert job_queue(Job(code="1", gpu={"required": False}), "sandrun") == "sandrun"


def test_queues_for_workers() -> None:
    assert worker_queues(["sandrun"], []) == ["sandrun"]
    gpus = [GPUDevice(0, GPUCard(type="t4")), GPUDevice(1, GPUCard(type="a100"))]
    assert worker_queues(["sandrun"], gpus) == ["sandrun", "sandrun.gpu", "sandrun.gpu.a100",
                                                "sandrun.gpu.t4"]


def test_declared_gpus_are_numbered() -> None:
    gpus = detect_gpus([GPUCard(type="t4"), GPUCard(type="t4"), GPUCard(type="a100")])
    assert [(g.index, g.type) for g in gpus] == [(0, "t4"), (1, "t4"), (2, "a100")]


def test_suitable_devices() -> None:
    gpus = [GPUDevice(0, GPUCard(type="t4", vram_gb=15.6, compute_capability="7.5")),
            GPUDevice(1, GPUCard(type="a100", vram_gb=40, compute_capability="8.0"))]
    assert [g.index for g in suitable(Job(code="1", gpu={"min_vram_gb": 20}), gpus)] == [1]
    assert [g.index for g in suitable(Job(code="1", gpu={"type": "t4"}), gpus)] == [0]
    assert [g.index for g in suitable(Job(code="1", gpu={"compute_capability": "8.0"}),
                                      gpus)] == [1]
    assert suitable(Job(code="1", gpu={"cuda_version": "11"}), gpus) == []  # not stated
    assert suitable(Job(code="1", gpu={"device_id": 5}), gpus) == []


def _hold(lock_dir: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    devices = [GPUDevice(0, GPUCard(type="t4")), GPUDevice(1, GPUCard(type="t4"))]
    with allocate(devices, 1, Path(lock_dir), 5) as ids:
        queue.put(ids)
        queue.get()


def test_allocation_is_exclusive_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    holder = ctx.Process(target=_hold, args=(str(tmp_path), queue))
    holder.start()
    held = queue.get(timeout=10)
    devices = [GPUDevice(0, GPUCard(type="t4")), GPUDevice(1, GPUCard(type="t4"))]
    with allocate(devices, 1, tmp_path, 5) as mine:
        assert set(mine).isdisjoint(held)
    with pytest.raises(TimeoutError, match="no 2 free GPU"), allocate(devices, 2, tmp_path, 0.2):
        pass
    queue.put("release")
    holder.join(10)
    with allocate(devices, 2, tmp_path, 5) as both:
        assert sorted(both) == [0, 1]


FAKE_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=index,name,memory.total,compute_cap)
    [ -n "$OLD_DRIVER" ] && { echo "Field compute_cap is not a valid field" >&2; exit 2; }
    echo "0, NVIDIA A100-SXM4-40GB, 40960, 8.0"
    echo "1, Tesla T4, 15360, 7.5" ;;
  --query-gpu=index,name,memory.total)
    echo "0, NVIDIA A100-SXM4-40GB, 40960" ;;
  *) echo "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |" ;;
esac
"""


@pytest.mark.parametrize("old_driver", [False, True])
def test_cards_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               old_driver: bool) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    if old_driver:  # drivers before 510 have no compute_cap field: cards without it
        monkeypatch.setenv("OLD_DRIVER", "1")
        assert detect_gpus(None) == [GPUDevice(0, GPUCard(type="a100", vram_gb=40,
                                                          cuda_version="12.2"))]
        return
    assert detect_gpus(None) == [
        GPUDevice(0, GPUCard(type="a100", vram_gb=40, compute_capability="8.0",
                             cuda_version="12.2")),
        GPUDevice(1, GPUCard(type="t4", vram_gb=15, compute_capability="7.5",
                             cuda_version="12.2"))]
