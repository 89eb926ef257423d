"""The client refuses a GPU job no registered worker can run, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer
from tests.worker.client.test_client import make
from worker.client.client import Sandrun
from worker.client.gpus import GPUCheck, check_gpus
from worker.errors import GPUUnavailable
from worker.models import Job, WorkerInfo
from worker.models.gpus import GPUCard
from worker.protocol import gpu_queues, job_queue
from worker.stores import registry

T4 = GPUCard(type="t4", vram_gb=16, compute_capability="7.5", cuda_version="12.0")
A100 = GPUCard(type="a100", vram_gb=40, compute_capability="8.0", cuda_version="12.2")


def worker(name: str, *cards: GPUCard, base: str = "sandrun") -> WorkerInfo:
    return WorkerInfo(hostname=name, pid=1, gpus=list(cards),
                      queues=gpu_queues([base], list(cards)))


FLEET = {w.hostname: w for w in (worker("small@h", T4), worker("big@h", A100),
                                 worker("cpu@h"))}


def check(fleet: dict[str, WorkerInfo], **gpu: object) -> None:
    job = Job(code="1", gpu=gpu)
    check_gpus(job, job_queue(job, "sandrun"), fleet)


def test_a_job_some_worker_can_run_passes() -> None:
    check(FLEET, min_vram_gb=24, compute_capability="8.0", cuda_version="12")
    check(FLEET, type="t4")
    check({}, required=False, type="h100")  # "use one if present" needs none


@pytest.mark.parametrize(("need", "said"), [
    ({"min_vram_gb": 48}, r"needs 1 GPU\(s\), min_vram_gb 48 \(queue 'sandrun.gpu.vram40'\)"
                          r".*best card available is a100 \(40 GB, cc 8.0, CUDA 12.2\), "
                          r"which lacks min_vram_gb 48"),
    ({"min_vram_gb": 20, "cuda_version": "12.1", "type": "t4"},
     r"best card available is t4 .*lacks min_vram_gb 20 and cuda_version >= 12.1"),
    ({"count": 2}, r"no worker has 2 such cards \(at most 1 on one worker\)"),
])
def test_a_refusal_names_the_requirement_and_the_best_card(need: dict[str, object],
                                                           said: str) -> None:
    with pytest.raises(GPUUnavailable, match=said) as refused:
        check(FLEET, **need)
    assert "SANDRUN_GPUS" in str(refused.value)


def test_cards_on_a_worker_of_other_queues_do_not_count() -> None:
    with pytest.raises(GPUUnavailable, match="other@h have such cards but do not consume"):
        check({"other@h": worker("other@h", A100, base="batch")}, type="a100")
    with pytest.raises(GPUUnavailable, match=r"no registered worker has a GPU \(1 worker"):
        check({"cpu@h": worker("cpu@h")})


def test_the_client_reads_the_registry_and_remembers_a_pass(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    client = make(f"redis+socket://{redis_server.socket}")
    now = [0.0]
    client.check_gpus = GPUCheck(client.app, ttl=10, clock=lambda: now[0])
    job = Job(code="1", gpu={"min_vram_gb": 24})
    with pytest.raises(GPUUnavailable, match="no registered worker has a GPU"):
        client.submit(job)
    assert redis_client.llen("sandrun.gpu.vram24") == 0  # nothing was published
    registry.register(redis_client, worker("big@h", A100))
    client.submit(job)
    registry.unregister(redis_client, "big@h")
    client.submit(job.replace(id="second"))  # within the window: not looked up again
    now[0] = 11
    with pytest.raises(GPUUnavailable):
        client.submit(job.replace(id="third"))
    assert redis_client.llen("sandrun.gpu.vram24") == 2
    client.close()


def test_without_a_redis_registry_gpu_jobs_go_unchecked(tmp_path: Path) -> None:
    with Sandrun.create(broker_url="memory://", result_backend=f"file://{tmp_path}",
                        plugins=[]) as client:
        client.submit(Job(code="1", gpu={"type": "h100"}))


def test_an_entry_the_client_cannot_read_is_left_out(redis_server: RedisServer,
                                                     redis_client: redis.Redis) -> None:
    registry.register(redis_client, worker("big@h", A100))
    redis_client.set(registry.PREFIX + "future@h", '{"hostname": "future@h", "pid": 1, '
                                                   '"tpus": ["v5"]}')
    redis_client.set(registry.PREFIX + "broken@h", b"\xff not json")
    assert sorted(registry.advertised(redis_client)) == ["big@h"]
