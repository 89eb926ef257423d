from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker import JobBuilder


def test_fluent_build() -> None:
    job = (JobBuilder().code("print(1)").interpreter("python3").args(["-v"])
           .env({"A": "1"}).env({"B": "2"}).gpu("a100", min_vram_gb=40).memory(256).timeout(30)
           .payment("0.1", "ETH").consensus("2-of-3").priority(7).queue("gpu")
           .labels({"team": "ml"}).outputs(["*.json"]).build())
    assert job.env == {"A": "1", "B": "2"} and job.gpu and job.gpu.type == "a100"
    assert (job.memory_mb, job.timeout, job.priority, job.queue) == (256, 30, 7, "gpu")
    assert job.payment and job.payment.amount == "0.1" and job.consensus == "2-of-3"


def test_builders_are_immutable_templates() -> None:
    base = JobBuilder().timeout(30).labels({"team": "a"})
    one = base.code("print(1)").labels({"x": "1"})
    two = base.code("print(2)")
    assert one.build().labels == {"team": "a", "x": "1"}
    assert two.build().labels == {"team": "a"}
    assert "code" not in base.fields


def test_code_and_entrypoint_replace_each_other() -> None:
    job = JobBuilder().code("1").file("main.py", "print(1)").entrypoint("main.py").build()
    assert job.code is None and job.entrypoint == "main.py"


def test_binary_file_and_defaults() -> None:
    builder = JobBuilder().code("1").file("blob", b"\x00\xff").timeout(5)
    builder = builder.defaults(timeout=100, memory_mb=64)
    job = builder.build()
    assert job.files["blob"].data() == b"\x00\xff"
    assert (job.timeout, job.memory_mb) == (5, 64)


def test_invalid_build_names_field() -> None:
    with pytest.raises(ValidationError, match="timeout"):
        JobBuilder().code("1").timeout(-1).build()


def test_submit_needs_a_client() -> None:
    with pytest.raises(TypeError, match="not bound to a client"):
        JobBuilder().code("1").submit()
    submitted = JobBuilder(submit=lambda job: job.id).code("1")
    assert isinstance(submitted.timeout(3).submit(), str)
