"""Where a worker sends a GPU job its cards cannot run, and how often."""

from __future__ import annotations

import redis

from tests.conftest import RedisServer
from worker.models import Job, WorkerInfo
from worker.models.gpus import GPUCard
from worker.node import gpuroute
from worker.protocol import GPU_REROUTES_HEADER, gpu_queues
from worker.sandbox.gpu import GPUDevice
from worker.stores import registry

T4 = GPUCard(type="t4", vram_gb=16, compute_capability="7.5", cuda_version="12.0")
A100 = GPUCard(type="a100", vram_gb=40, compute_capability="8.0", cuda_version="12.2")
L4 = GPUCard(type="l4", vram_gb=24, compute_capability="8.9", cuda_version="12.4")


def test_misdelivered_only_when_the_cards_do_not_meet_the_job() -> None:
    here = [GPUDevice(0, T4)]
    assert not gpuroute.misdelivered(Job(code="1"), here)
    assert not gpuroute.misdelivered(Job(code="1", gpu={"required": False, "type": "a100"}),
                                     here)
    assert not gpuroute.misdelivered(Job(code="1", gpu={"min_vram_gb": 16}), here)
    assert gpuroute.misdelivered(Job(code="1", gpu={"compute_capability": "8.0"}), here)
    assert gpuroute.misdelivered(Job(code="1", gpu={"count": 2}), here)


def test_the_count_header_is_the_senders_word() -> None:
    for value, counted in ((3, 3), ("3", 0), (-1, 0), (True, 0), (10**9, 0), (None, 0)):
        assert gpuroute.reroutes({GPU_REROUTES_HEADER: value}) == counted
    assert gpuroute.reroutes(None) == 0


def test_every_other_reroute_waits_a_countdown_doubling_up_to_a_ceiling() -> None:
    assert [gpuroute.countdown(n) for n in range(10)] == [0, 0.5, 0, 1, 0, 2, 0, 4, 0, 8]
    assert gpuroute.countdown(11) == gpuroute.countdown(127) == 10


def test_a_narrower_class_a_registered_card_serves(redis_server: RedisServer,
                                                    redis_client: redis.Redis) -> None:
    job = Job(code="1", gpu={"compute_capability": "8.0", "min_vram_gb": 20})
    here = gpu_queues(["sandrun"], [T4])
    assert gpuroute.narrower_queue(job, redis_client, "sandrun", here) is None  # nobody
    assert gpuroute.narrower_queue(job, None, "sandrun", here) is None  # no registry
    for name, cards in (("a@h", [A100]), ("b@h", [L4]), ("c@h", [L4]), ("d@h", [T4])):
        registry.register(redis_client, WorkerInfo(hostname=name, pid=1, gpus=cards,
                                                   queues=gpu_queues(["sandrun"], cards)))
    # the type most capable workers have, in the job's VRAM class
    assert gpuroute.narrower_queue(job, redis_client, "sandrun", here) == "sandrun.gpu.l4.vram16"
    # never a queue this worker consumes itself (it would only receive the job again)
    mine = [*here, "sandrun.gpu.l4.vram16"]
    assert gpuroute.narrower_queue(job, redis_client, "sandrun", mine) == \
        "sandrun.gpu.a100.vram16"
    two = Job(code="1", gpu={"count": 2, "compute_capability": "8.0"})
    assert gpuroute.narrower_queue(two, redis_client, "sandrun", here) is None
