"""GPU jobs go to the capability class of what they need, only workers whose declared
cards (SANDRUN_GPUS, no real GPU needed) serve the class take them, a job no registered
worker can run is refused at submit, and a worker whose cards do not meet a job it
received sends it on instead of failing it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plugins.auth import auth_plugin
from plugins.auth.tokens import HMACProvider
from tests.conftest import RedisServer
from tests.integration.conftest import ROOT, Worker, WorkerFactory, broker_url, worker_env
from worker.client.client import JobExecution, Sandrun
from worker.errors import GPUUnavailable

pytestmark = pytest.mark.slow

SHOW_DEVICES = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
SLEEP = "import time; time.sleep(120)"
KEY = "gpu-routing-key-0123456789abcdef"
SMALL = "t4:16:7.5:12.0"
BIG = "a100:40:8.0:12.2"


def waiting(broker: RedisServer, queue: str) -> int:
    """Messages waiting in the broker for ``queue`` (kombu keeps a list per priority step)."""
    client = broker.client()
    steps = [key for key in client.scan_iter(f"{queue}*", _type="list")
             if key == queue.encode() or key.startswith(f"{queue}\x06\x16".encode())]
    return sum(int(client.llen(key)) for key in steps)


def until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
        time.sleep(0.05)


def ran_on(run: JobExecution, name: str) -> None:
    result = run.wait(timeout=60)
    assert result.status == "completed", result
    assert result.execution and result.execution.node_id.startswith(f"{name}@")


def busy(client: Sandrun, **gpu: object) -> JobExecution:
    """A GPU job that holds its worker's only slot until cancelled."""
    run = client.job().code(SLEEP).timeout(150).gpu(**gpu).submit()
    until("the sleeper running", lambda: run.status() == "running")
    return run


@pytest.fixture
def client(broker: RedisServer) -> Iterator[Sandrun]:
    with Sandrun.create(broker_url=broker_url(broker), plugins=[]) as made:
        yield made


@pytest.fixture
def fleet(start_worker: WorkerFactory, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Worker]]:
    """A 16 GB worker and a 40 GB one, one slot each, as if on two hosts (each its own
    state directory, so its own GPU locks), stopped after the test (so the registry
    holds only the workers of the test running)."""
    workers = {name: start_worker(name=name, concurrency=1, cli=True, SANDRUN_GPUS=cards,
                                  SANDRUN_STATE_DIR=str(tmp_path_factory.mktemp(name)))
               for name, cards in (("small", SMALL), ("big", BIG))}
    yield workers
    for worker in workers.values():
        worker.stop()


def test_a_16_gb_worker_never_receives_a_24_gb_job_and_a_40_gb_one_does(
        client: Sandrun, broker: RedisServer, fleet: dict[str, Worker]) -> None:
    sleeper = busy(client, min_vram_gb=24)  # only the 40 GB worker consumes vram24
    wanted = client.job().code(SHOW_DEVICES).gpu(min_vram_gb=24).submit()
    fits_both = client.job().code(SHOW_DEVICES).gpu(min_vram_gb=16).submit()
    # the 40 GB worker's slot is taken, so the idle 16 GB one runs the 16 GB job...
    ran_on(fits_both, "small")
    # ...and leaves the 24 GB one waiting in its class for the 40 GB worker
    assert wanted.status() == "queued" and waiting(broker, "sandrun.gpu.vram24") == 1
    sleeper.cancel()
    ran_on(wanted, "big")
    small = fleet["small"].output()
    assert wanted.id not in small and sleeper.id not in small
    assert "sandrun.gpu.vram24" not in small and "sandrun.gpu.vram40" in fleet["big"].output()


def test_a_job_no_registered_worker_can_run_is_refused_at_submit(
        client: Sandrun, broker: RedisServer, fleet: dict[str, Worker], tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "worker.cli", "workers"], cwd=ROOT,
                            env=worker_env(broker, tmp_path, COLUMNS="300"),
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert SMALL in listed.stdout and BIG in listed.stdout  # the cards they advertise
    best = r"a100 \(40 GB, cc 8.0, CUDA 12.2\)"
    refusals = {
        "min_vram_gb 80": {"min_vram_gb": 80},
        "cuda_version >= 12.4": {"cuda_version": "12.4"},
        "compute_capability >= 9.0": {"compute_capability": "9.0"},
        "type h100": {"type": "h100"},
    }
    for lacks, need in refusals.items():
        with pytest.raises(GPUUnavailable, match=f"best card available is {best}, which "
                                                 f"lacks {lacks}"):
            client.job().code("print(1)").gpu(**need).submit()
    with pytest.raises(GPUUnavailable, match=r"no worker has 2 such cards \(at most 1"):
        client.job().code("print(1)").gpu("a100", count=2).submit()
    assert waiting(broker, "sandrun.gpu") == 0  # nothing was published
    # what the fleet can run is accepted and runs
    ran_on(client.job().code(SHOW_DEVICES).gpu(cuda_version="12.2",
                                               compute_capability="8.0").submit(), "big")


def test_compute_capability_and_cuda_are_matched_at_delivery(
        client: Sandrun, broker: RedisServer, fleet: dict[str, Worker]) -> None:
    sleeper = busy(client, type="a100")
    # Both workers consume sandrun.gpu, and only the 16 GB one is free: it receives
    # these, and sends them on to the class of the card that meets them (the registry
    # says a100), which it does not consume, rather than failing them.
    runs = [client.job().code(SHOW_DEVICES).gpu(compute_capability="8.0").submit(),
            client.job().code(SHOW_DEVICES).gpu(cuda_version="12.1").submit()]
    for run in runs:
        until("re-routed by the 16 GB worker", lambda run=run: any(
            "gpu_job_rerouted" in line and run.id in line and "queue=sandrun.gpu.a100" in line
            for line in fleet["small"].output().splitlines()))
    assert [run.status() for run in runs] == ["queued", "queued"]
    assert waiting(broker, "sandrun.gpu.a100") == 2
    sleeper.cancel()
    for run in runs:
        ran_on(run, "big")


def test_a_signed_job_goes_back_to_its_own_queue_and_still_verifies(
        start_worker: WorkerFactory, broker: RedisServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps({"k1": KEY}))
    plugins = json.dumps([{"name": "auth", "config": {"keys_file": str(keys)}}])
    workers = {name: start_worker(name=f"signed-{name}", concurrency=1, cli=True,
                                  SANDRUN_GPUS=cards, SANDRUN_PLUGINS=plugins,
                                  SANDRUN_STATE_DIR=str(tmp_path_factory.mktemp(name)))
               for name, cards in (("small", SMALL), ("big", BIG))}
    signer = auth_plugin(HMACProvider("k1", KEY), auto_refresh=False)  # type: ignore[arg-type]
    try:
        with Sandrun.create(broker_url=broker_url(broker), plugins=[signer]) as client:
            sleeper = busy(client, type="a100")
            run = client.job().code(SHOW_DEVICES).gpu(compute_capability="8.0").submit()
            until("re-routed to its own queue", lambda: any(
                "gpu_job_rerouted" in line and run.id in line and "queue=sandrun.gpu " in line
                for line in workers["small"].output().splitlines()))
            sleeper.cancel()
            ran_on(run, "signed-big")  # not rejected as moved to another queue
    finally:
        for worker in workers.values():
            worker.stop()


def test_gpu_job_waits_for_a_gpu_worker(start_worker: WorkerFactory, client: Sandrun,
                                        broker: RedisServer) -> None:
    cpu = start_worker(name="cpu", concurrency=1, cli=True)
    gpu = start_worker(name="gpu", concurrency=1, cli=True,
                       SANDRUN_GPUS='[{"type": "t4", "count": 2}]')
    try:
        sleeper = busy(client, type="t4")
        gpu_run = client.job().code(SHOW_DEVICES).gpu("t4").submit()
        cpu_result = client.job().code(SHOW_DEVICES).submit().wait(timeout=30)
        assert cpu_result.stdout == "\n"
        assert cpu_result.execution and cpu_result.execution.node_id.startswith("cpu@")
        # The -c 1 CPU worker was idle when the GPU job was published before the CPU one:
        # had it consumed the GPU queue, it would have taken that job first.
        assert gpu_run.status() == "queued" and waiting(broker, "sandrun.gpu.t4") == 1
        sleeper.cancel()
        result = gpu_run.wait(timeout=30)
        assert result.status == "completed" and result.stdout.strip() in {"0", "1"}
        assert result.execution and result.execution.node_id.startswith("gpu@")
        assert result.execution.gpu_type == "t4"
        assert "sandrun.gpu.t4" in gpu.output() and "sandrun.gpu" not in cpu.output()
        # a type no worker has is refused, not left waiting
        with pytest.raises(GPUUnavailable, match="lacks type a100"):
            client.job().code(SHOW_DEVICES).gpu("a100").submit()
    finally:
        gpu.stop()
        cpu.stop()
