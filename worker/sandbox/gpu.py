"""GPU devices: which queues a worker with GPUs consumes, which devices a job may see.
(Which queue a job is published to is wire knowledge: :func:`worker.protocol.job_queue`.)

A job that requires a GPU goes to ``<queue>.gpu`` (``<queue>.gpu.<type>`` when it
names a type); a CPU-only worker consumes only the plain queues, so it never
takes a GPU job. A worker advertises the GPUs it finds with ``nvidia-smi`` or,
when ``SANDRUN_GPUS`` is set, the configured ones. Devices are handed to jobs
one at a time through lock files, and ``CUDA_VISIBLE_DEVICES`` names them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.models import Job
from worker.settings import GPUConfig

_VENDOR_WORDS = re.compile(r"\b(nvidia|tesla|geforce|quadro)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GPUDevice:
    """One GPU this worker can hand to jobs."""

    index: int
    type: str
    memory_mb: int | None = None


def gpu_type_name(product: str) -> str:
    """A short type from a product name: 'NVIDIA A100-SXM4-40GB' -> 'a100',
    'NVIDIA GeForce RTX 3090' -> 'rtx3090'."""
    words = _VENDOR_WORDS.sub("", product).strip().split("-")[0].lower().split()
    if not words:
        return "gpu"
    name = words[0] + words[1] if words[0].isalpha() and len(words) > 1 else words[0]
    return re.sub(r"[^a-z0-9]", "", name) or "gpu"


def detect_gpus(configured: Sequence[GPUConfig] | None) -> list[GPUDevice]:
    """Configured GPUs when given, else those ``nvidia-smi`` lists, else none."""
    if configured is not None:
        devices, index = [], 0
        for item in configured:
            for _ in range(item.count):
                devices.append(GPUDevice(index, item.type, item.memory_mb))
                index += 1
        return devices
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        number, name, memory = (part.strip() for part in line.split(","))
        found.append(GPUDevice(int(number), gpu_type_name(name), int(float(memory))))
    return found


def worker_queues(base_queues: Sequence[str], gpus: Sequence[GPUDevice]) -> list[str]:
    """Queues a worker with ``gpus`` consumes: the plain ones, plus GPU ones if it has any."""
    queues = list(base_queues)
    if gpus:
        types = sorted({g.type for g in gpus})
        for base in base_queues:
            queues += [f"{base}.gpu", *(f"{base}.gpu.{t}" for t in types)]
    return queues


def suitable(job: Job, gpus: Sequence[GPUDevice]) -> list[GPUDevice]:
    """Devices of this worker that meet the job's type and VRAM needs."""
    if job.gpu is None:
        return []
    found = [g for g in gpus if job.gpu.type in (None, g.type)]
    if job.gpu.min_vram_gb is not None:
        need = job.gpu.min_vram_gb * 1024
        found = [g for g in found if g.memory_mb is None or g.memory_mb >= need]
    if job.gpu.device_id is not None:
        found = [g for g in found if g.index == job.gpu.device_id]
    return found


@contextlib.contextmanager
def allocate(devices: Sequence[GPUDevice], count: int, lock_dir: Path,
             timeout: float) -> Iterator[list[int]]:
    """Hold ``count`` of ``devices`` for the duration (flock per device, shared by all
    pool processes of the host); raise TimeoutError when none free up in time."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        held: list[tuple[int, int]] = []
        for device in devices:
            fd = os.open(lock_dir / f"gpu-{device.index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((device.index, fd))
            if len(held) == count:
                break
        if len(held) == count:
            break
        for _, fd in held:
            os.close(fd)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {count} free GPU(s) within {timeout:g}s")
        time.sleep(0.05)
    try:
        yield [index for index, _ in held]
    finally:
        for _, fd in held:
            os.close(fd)
