from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from worker.models import Job, JobFile, JobResult, Payment, cap_text


def test_id_is_generated_and_unique() -> None:
    a, b = Job(code="print(1)"), Job(code="print(1)")
    assert a.id and b.id and a.id != b.id


def test_inline_code_defaults_to_python3_and_manifest_limits() -> None:
    job = Job(code="print(1)")
    assert job.interpreter == "python3"
    assert (job.timeout, job.memory_mb, job.cpu_seconds, job.outputs) == (300, 512, 10, ["*"])


@pytest.mark.parametrize(("entry", "interpreter"), [
    ("main.py", "python3"), ("build.js", "node"), ("run.sh", "bash"), ("model.R", "Rscript"),
    ("app.rb", "ruby"),
])
def test_interpreter_inferred_from_extension(entry: str, interpreter: str) -> None:
    job = Job(entrypoint=entry, files={entry: "x"})
    assert job.interpreter == interpreter


def test_unknown_extension_needs_an_interpreter() -> None:
    with pytest.raises(ValidationError, match="cannot infer the interpreter"):
        Job(entrypoint="main.xyz", files={"main.xyz": ""})
    job = Job(entrypoint="main.xyz", files={"main.xyz": ""}, interpreter="xyz")
    assert job.interpreter == "xyz"


def test_exactly_one_of_code_or_entrypoint() -> None:
    with pytest.raises(ValidationError, match=r"exactly one of 'code'"):
        Job()
    with pytest.raises(ValidationError, match=r"exactly one of 'code'"):
        Job(code="1", entrypoint="a.py", files={"a.py": ""})


def test_entrypoint_must_be_among_files() -> None:
    with pytest.raises(ValidationError, match="not among the job's files"):
        Job(entrypoint="main.py")


@pytest.mark.parametrize("path", ["/etc/passwd", "../up.py", "a/../../b", "C:\\x", "a\x00b", ""])
def test_file_paths_cannot_escape(path: str) -> None:
    with pytest.raises(ValidationError):
        Job(code="1", files={path: "x"})


def test_output_patterns_cannot_escape() -> None:
    with pytest.raises(ValidationError, match=r"contains '\.\.'"):
        Job(code="1", outputs=["../secrets/*"])
    assert Job(code="1", outputs=["results/", "*.png"]).outputs == ["results/", "*.png"]


@pytest.mark.parametrize("key", ["LD_PRELOAD", "SANDRUN_BROKER_URL", "CELERY_BROKER_URL",
                                 "NODE_OPTIONS"])
def test_dangerous_env_refused(key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        Job(code="1", env={key: "x"})


def test_env_key_syntax() -> None:
    with pytest.raises(ValidationError, match="env"):
        Job(code="1", env={"1BAD": "x"})


@pytest.mark.parametrize(("field", "value"), [
    ("timeout", 0), ("timeout", 3601), ("memory_mb", 0), ("memory_mb", 4096),
    ("priority", 10), ("priority", -1), ("consensus", "most"),
])
def test_bounds(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Job(code="1", **{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_payment_is_a_decimal_string() -> None:
    assert Payment(amount="0.10", currency="ETH").decimal() * 3 == Payment(
        amount="0.30", currency="ETH").decimal()
    for bad in ("abc", "-1", "NaN", "Infinity"):
        with pytest.raises(ValidationError):
            Payment(amount=bad, currency="ETH")


def test_scheduled_time_needs_timezone() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        Job(code="1", scheduled_time=datetime(2030, 1, 1))
    assert Job(code="1", scheduled_time=datetime(2030, 1, 1, tzinfo=UTC)).scheduled_time


def test_gpu_requirements() -> None:
    job = Job(code="1", gpu={"type": "a100", "min_vram_gb": 40, "cuda_version": "12.1",
                             "compute_capability": "8.0", "count": 2})
    assert job.needs_gpu and job.gpu is not None and job.gpu.count == 2
    assert not Job(code="1", gpu={"required": False}).needs_gpu
    with pytest.raises(ValidationError):
        Job(code="1", gpu={"compute_capability": "eight"})


def test_unknown_fields_rejected() -> None:
    with pytest.raises(ValidationError, match="timout"):
        Job(code="1", timout=5)


def test_job_is_frozen_and_replace_validates() -> None:
    job = Job(code="1")
    with pytest.raises(ValidationError):
        job.timeout = 5  # type: ignore[misc]
    changed = job.replace(timeout=5)
    assert (changed.timeout, changed.id, job.timeout) == (5, job.id, 300)
    with pytest.raises(ValidationError):
        job.replace(timeout=-1)


def test_json_round_trip() -> None:
    job = Job(entrypoint="a.py", files={"a.py": "print(1)", "data.bin": JobFile(
        content="AAEC", encoding="base64")}, payment={"amount": "1.5", "currency": "USD"},
        labels={"team": "ml"}, scheduled_time=datetime(2030, 1, 1, tzinfo=UTC))
    again = Job.model_validate_json(job.model_dump_json())
    assert again == job
    assert again.files["data.bin"].data() == b"\x00\x01\x02"


def test_bad_base64_refused() -> None:
    with pytest.raises(ValidationError, match="base64"):
        JobFile(content="***", encoding="base64")


def test_result_statuses_and_replace() -> None:
    result = JobResult(id="j1", status="completed", exit_code=0)
    assert result.replace(status="failed").status == "failed"
    with pytest.raises(ValidationError):
        JobResult(id="j1", status="exploded")


def test_cap_text_marks_truncation() -> None:
    assert cap_text(b"hello", 10) == ("hello", False)
    text, cut = cap_text(b"x" * 100, 10)
    assert cut and text.startswith("x" * 10) and "90 more bytes" in text
