"""GPU devices: which queues a worker with GPUs consumes, which devices a job may see.
(Which queue a job is published to is wire knowledge: :func:`worker.protocol.job_queue`.)

A worker advertises the cards ``nvidia-smi`` finds or, when ``SANDRUN_GPUS`` is set,
the declared ones (:mod:`worker.models.gpus`), and consumes every capability class
its cards serve (:func:`worker.protocol.gpu_queues`); a CPU-only worker consumes only
the plain queues, so it never takes a GPU job. Devices are handed to jobs one at a
time through lock files, and ``CUDA_VISIBLE_DEVICES`` names them. A declared card
need not exist: the sandbox binds only the device nodes the host has, so tests run
GPU jobs on hosts without a GPU.
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
from worker.models.gpus import GPUCard, meets
from worker.protocol import gpu_queues

_VENDOR_WORDS = re.compile(r"\b(nvidia|tesla|geforce|quadro)\b", re.IGNORECASE)
_CUDA_VERSION = re.compile(r"CUDA Version:\s*(\d+\.\d+)")
_QUERY = "--query-gpu=index,name,memory.total,compute_cap"


@dataclass(frozen=True, slots=True)
class GPUDevice:
    """One GPU this worker can hand to jobs: its index and the card it is."""

    index: int
    card: GPUCard

    @property
    def type(self) -> str:
        """The card's short type, e.g. ``a100``."""
        return self.card.type


def gpu_type_name(product: str) -> str:
    """A short type from a product name: 'NVIDIA A100-SXM4-40GB' -> 'a100',
    'NVIDIA GeForce RTX 3090' -> 'rtx3090'."""
    words = _VENDOR_WORDS.sub("", product).strip().split("-")[0].lower().split()
    if not words:
        return "gpu"
    name = words[0] + words[1] if words[0].isalpha() and len(words) > 1 else words[0]
    return re.sub(r"[^a-z0-9]", "", name) or "gpu"


def detect_gpus(configured: Sequence[GPUCard] | None) -> list[GPUDevice]:
    """Declared cards (SANDRUN_GPUS) when given, else those ``nvidia-smi`` lists, else
    none."""
    if configured is not None:
        return [GPUDevice(index, card) for index, card in enumerate(configured)]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = None
    for query in (_QUERY, _QUERY.removesuffix(",compute_cap")):  # drivers before 510 lack it
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = _smi(smi, query, "--format=csv,noheader,nounits")
            break
    if out is None:
        return []
    cuda = _driver_cuda(smi)
    found = []
    for line in out.strip().splitlines():
        number, name, memory, cc = ([part.strip() for part in line.split(",")] + [""])[:4]
        found.append(GPUDevice(int(number), GPUCard(
            type=gpu_type_name(name), vram_gb=round(float(memory) / 1024, 1),
            compute_capability=cc if re.fullmatch(r"\d+\.\d+", cc) else None,
            cuda_version=cuda)))
    return found


def _smi(smi: str, *args: str) -> str:
    """What ``nvidia-smi args`` prints (raises when it fails)."""
    return subprocess.run([smi, *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout


def _driver_cuda(smi: str) -> str | None:
    """The newest CUDA version the driver runs (nvidia-smi's banner), or None."""
    try:
        found = _CUDA_VERSION.search(_smi(smi))
    except (OSError, subprocess.SubprocessError):
        return None
    return found[1] if found else None


def worker_queues(base_queues: Sequence[str], gpus: Sequence[GPUDevice]) -> list[str]:
    """Queues a worker with ``gpus`` consumes: the plain ones, plus every GPU capability
    class its cards serve."""
    return gpu_queues(base_queues, [g.card for g in gpus])


def suitable(job: Job, gpus: Sequence[GPUDevice]) -> list[GPUDevice]:
    """Devices of this worker that meet all the job's GPU requirements (type, VRAM,
    compute capability, CUDA version, device id)."""
    need = job.gpu
    if need is None:
        return []
    return [g for g in gpus if meets(g.card, need)
            and need.device_id in (None, g.index)]


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
