"""SANDRUN_GPUS, the GPU capability classes, and matching a job's requirements."""

from __future__ import annotations

import pytest

from worker.models import GPURequirements, Job
from worker.models.gpus import (
    GPUCard,
    best_card,
    describe_need,
    meets,
    parse_gpus,
    unmet,
    vram_bucket,
)
from worker.protocol import gpu_queues, job_queue

A100 = GPUCard(type="a100", vram_gb=40, compute_capability="8.0", cuda_version="12.2")
T4 = GPUCard(type="t4", vram_gb=16, compute_capability="7.5", cuda_version="12.0")


def test_compact_form_with_counts_and_unknown_fields() -> None:
    cards = parse_gpus(" a100:40:8.0:12.2*2 , t4::7.5 ,H100:80")
    assert cards == [A100, A100, GPUCard(type="t4", compute_capability="7.5"),
                     GPUCard(type="h100", vram_gb=80)]


def test_json_form_takes_vram_or_memory_mb() -> None:
    cards = parse_gpus('[{"type": "a100", "vram_gb": 40, "compute_capability": "8.0", '
                       '"cuda_version": "12.2"}, {"type": "l4", "memory_mb": 24576, "count": 2}]')
    assert cards == [A100, GPUCard(type="l4", vram_gb=24), GPUCard(type="l4", vram_gb=24)]


@pytest.mark.parametrize(("text", "problem"), [
    ("", "declares no GPU"),
    ("a100:40:8.0:12.2:extra", "is not type"),
    ("a100:-4", "vram_gb"),
    ("a100:40:eight", "compute_capability"),
    ("a100:40:8.0:12.x", "cuda_version"),
    ("a100*0", "count"),
    ("a100*999", "count"),
    ("A 100", "type"),
    ('[{"type": "t4", "colour": "red"}]', "colour"),
    ("[not json", "not a valid list"),
])
def test_bad_declarations_say_what_and_the_format(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_gpus(text)
    assert "type[:vram_gb" in str(caught.value)


def test_vram_buckets_round_down() -> None:
    assert [vram_bucket(v) for v in (None, 4, 8, 15, 16, 23.9, 24, 39, 48, 80, 94)] == [
        None, None, 8, 8, 16, 16, 24, 24, 40, 80, 80]


def test_job_queues_are_capability_classes() -> None:
    def queue(**gpu: object) -> str:
        return job_queue(Job(code="1", gpu=gpu), "sandrun")
    assert queue() == "sandrun.gpu"
    assert queue(type="A100") == "sandrun.gpu.a100"
    assert queue(min_vram_gb=4) == "sandrun.gpu"
    assert queue(min_vram_gb=24) == "sandrun.gpu.vram24"
    assert queue(min_vram_gb=30, type="a100") == "sandrun.gpu.a100.vram24"
    assert queue(memory_mb=40 * 1024) == "sandrun.gpu.vram40"
    assert queue(compute_capability="8.0", cuda_version="12") == "sandrun.gpu"
    assert job_queue(Job(code="1", gpu={"required": False}), "sandrun") == "sandrun"


def test_a_worker_consumes_every_class_its_cards_serve() -> None:
    assert gpu_queues(["q"], []) == ["q"]
    assert gpu_queues(["q"], [T4]) == [
        "q", "q.gpu", "q.gpu.t4", "q.gpu.t4.vram16", "q.gpu.t4.vram8", "q.gpu.vram16",
        "q.gpu.vram8"]
    both = gpu_queues(["q"], [T4, A100])
    assert "q.gpu.vram40" in both and "q.gpu.t4.vram24" not in both
    assert "q.gpu.a100.vram40" in both and "q.gpu.vram80" not in both
    unknown = gpu_queues(["q"], [GPUCard(type="t4")])
    assert unknown == ["q", "q.gpu", "q.gpu.t4"]


@pytest.mark.parametrize("need", [
    {}, {"min_vram_gb": 20}, {"type": "t4"}, {"cuda_version": "12.3"}, {"type": "a100"},
    {"min_vram_gb": 40}, {"compute_capability": "8.6"}, {"cuda_version": "11"},
])
def test_a_job_is_delivered_only_to_a_class_some_card_of_it_serves(need: dict[str, object]
                                                                 ) -> None:
    """The invariant routing rests on: every card that meets a job consumes its queue."""
    job = Job(code="1", gpu=need)
    assert job.gpu is not None
    for card in (T4, A100):
        if meets(card, job.gpu):
            assert job_queue(job, "q") in gpu_queues(["q"], [card])


def test_matching_each_requirement() -> None:
    def need(**fields: object) -> GPURequirements:
        return GPURequirements.model_validate(fields)
    assert meets(T4, need()) and meets(T4, need(min_vram_gb=16))
    assert unmet(T4, need(min_vram_gb=24)) == ["min_vram_gb 24"]
    assert unmet(T4, need(type="a100")) == ["type a100"]
    assert meets(A100, need(compute_capability="7.5")) and meets(A100, need(cuda_version="12"))
    assert unmet(T4, need(compute_capability="8.0")) == ["compute_capability >= 8.0"]
    assert unmet(A100, need(cuda_version="12.10")) == ["cuda_version >= 12.10"]
    assert meets(A100, need(cuda_version="12.2.0")) and meets(A100, need(memory_mb=40960))
    # a card that does not say is a card that does not meet the requirement
    assert unmet(GPUCard(type="t4"), need(min_vram_gb=8, cuda_version="11.0")) == [
        "min_vram_gb 8", "cuda_version >= 11.0"]


def test_best_card_and_words_for_errors() -> None:
    need = GPURequirements(min_vram_gb=80, compute_capability="8.0")
    assert best_card([T4, A100], need) == A100
    assert best_card([], need) is None
    assert A100.describe() == "a100 (40 GB, cc 8.0, CUDA 12.2)"
    assert [c.spec() for c in (A100, GPUCard(type="t4", compute_capability="7.5"))] == [
        "a100:40:8.0:12.2", "t4::7.5"]
    assert parse_gpus(A100.spec()) == [A100]
    assert describe_need(need) == "1 GPU(s), min_vram_gb 80, compute_capability >= 8.0"
