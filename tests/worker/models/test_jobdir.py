from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from worker.errors import InvalidJob
from worker.models import Job
from worker.models.jobdir import manifest_fields

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "jobs"


def test_python_job_with_outputs() -> None:
    job = Job.from_manifest(EXAMPLES / "python-outputs")
    assert job.entrypoint == "analyze.py" and job.interpreter == "python3"
    assert job.args == ["--dataset", "sales.csv"]
    assert job.outputs == ["figures/", "report.txt"]
    assert (job.memory_mb, job.timeout, job.cpu_seconds) == (256, 60, 10)
    assert set(job.files) == {"analyze.py", "sales.csv"}


def test_node_build_from_job_json_path() -> None:
    job = Job.from_manifest(EXAMPLES / "node-build" / "job.json")
    assert job.interpreter == "node" and job.env == {"NODE_ENV": "production"}
    assert "src/greet.js" in job.files and job.outputs == ["dist/"]


def test_shell_pipeline_keeps_executable_bit() -> None:
    job = Job.from_manifest(EXAMPLES / "shell-pipeline")
    assert job.interpreter == "bash" and job.timeout == 600
    assert job.files["pipeline.sh"].executable
    assert {"raw/a.csv", "raw/b.csv"} <= set(job.files)


def test_r_job_with_args() -> None:
    job = Job.from_manifest(EXAMPLES / "r-args")
    assert job.interpreter == "Rscript" and job.args == ["--confidence", "0.95"]
    assert job.timeout == 300 and job.memory_mb == 512


def test_gpu_training() -> None:
    job = Job.from_manifest(EXAMPLES / "gpu-training")
    assert job.needs_gpu and job.gpu is not None
    assert (job.gpu.min_vram_gb, job.gpu.cuda_version) == (8, "11.8")
    assert (job.timeout, job.memory_mb) == (1800, 2048)


def test_manifest_fields_leave_unset_fields_out() -> None:
    fields = manifest_fields(EXAMPLES / "r-args")
    assert "timeout" not in fields and "memory_mb" not in fields
    assert fields["args"] == ["--confidence", "0.95"]


def _write(tmp_path: Path, manifest: object, files: dict[str, bytes] | None = None) -> Path:
    (tmp_path / "job.json").write_text(json.dumps(manifest))
    for name, data in (files or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


def test_every_problem_named_with_field_and_rule(tmp_path: Path) -> None:
    _write(tmp_path, {"entrypoint": "main.py", "timeout": 7200, "memory_mb": 0, "timout": 5},
           {"main.py": b"print(1)"})
    with pytest.raises(InvalidJob) as info:
        Job.from_manifest(tmp_path)
    fields = dict(info.value.problems)
    assert set(fields) == {"timeout", "memory_mb", "timout"}
    assert "3600" in fields["timeout"] and "7200" in fields["timeout"]
    assert "unknown field" in fields["timout"]
    assert "timeout:" in str(info.value)


def test_entrypoint_required() -> None:
    with pytest.raises(InvalidJob) as info:
        Job.from_manifest({"interpreter": "python3"})
    assert info.value.problems[0][0] == "entrypoint"


def test_dict_manifest_needs_files() -> None:
    with pytest.raises(InvalidJob, match="not among the job's files"):
        Job.from_manifest({"entrypoint": "main.py"})
    job = Job.from_manifest({"entrypoint": "main.py"}, files={"main.py": "print(1)"})
    assert job.interpreter == "python3"


def test_binary_files_are_base64(tmp_path: Path) -> None:
    _write(tmp_path, {"entrypoint": "main.py"}, {"main.py": b"print(1)", "blob.bin": b"\xff\x00"})
    job = Job.from_manifest(tmp_path)
    assert job.files["blob.bin"].encoding == "base64"
    assert job.files["blob.bin"].data() == b"\xff\x00"


def test_escaping_symlink_refused(tmp_path: Path) -> None:
    _write(tmp_path, {"entrypoint": "main.py"}, {"main.py": b"print(1)"})
    os.symlink("/etc/passwd", tmp_path / "passwd")
    with pytest.raises(InvalidJob, match="symlink points outside"):
        Job.from_manifest(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
])
def test_malformed_json(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "job.json").write_text(content)
    with pytest.raises(InvalidJob, match=message):
        Job.from_manifest(tmp_path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(InvalidJob, match="does not exist"):
        Job.from_manifest(tmp_path)


def test_gpu_block_unknown_key(tmp_path: Path) -> None:
    _write(tmp_path, {"entrypoint": "t.py", "gpu": {"vram": 8}}, {"t.py": b""})
    with pytest.raises(InvalidJob) as info:
        Job.from_manifest(tmp_path)
    assert info.value.problems[0][0] == "gpu.vram"
