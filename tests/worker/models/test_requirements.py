"""Requirement strings: plain names and specifiers only, one cache key per set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker import JobBuilder
from worker.errors import InvalidJob
from worker.models import Job
from worker.models.requirements import (
    MAX_REQUIREMENTS,
    check_requirement,
    normalize,
    parse_requirements_file,
    requirement_key,
)


@pytest.mark.parametrize(("given", "normal"), [
    ("tomli", "tomli"),
    ("Tomli >= 2.0", "tomli>=2.0"),
    ("My_Package.Name", "my-package-name"),
    ("pkg[B,a]<3,>=1", "pkg[a,b]<3,>=1"),
    ('tomli; python_version < "3.11"', 'tomli; python_version < "3.11"'),
])
def test_plain_requirements_are_normalized(given: str, normal: str) -> None:
    assert check_requirement(given) == normal
    assert check_requirement(normal) == normal  # idempotent: a stored job reads back equal


@pytest.mark.parametrize(("bad", "why"), [
    ("tomli @ https://evil.example/tomli.whl", "URL or path"),
    ("tomli @ file:///etc/passwd", "URL or path"),
    ("./local/pkg", "not a package name"),
    ("/abs/pkg.whl", "not a package name"),
    ("--index-url=https://evil.example/simple", "pip option"),
    ("-e git+https://x/y", "pip option"),
    ("-r other.txt", "pip option"),
    ("tomli --hash=sha256:00", "not a package name"),
    ("tomli; os.system('x')", "not a package name"),
    ("", "1 to 200"),
    ("a" * 201, "1 to 200"),
])
def test_anything_but_a_name_and_specifier_is_refused(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_requirement(bad)


def test_the_key_ignores_order_spelling_and_duplicates_but_not_versions() -> None:
    key = requirement_key(["tomli>=2", "attrs"], "3.11")
    assert key == requirement_key(["Attrs", "tomli >= 2", "attrs"], "3.11")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key != requirement_key(["tomli>=2", "attrs"], "3.12")
    assert key != requirement_key(["tomli>=2.1", "attrs"], "3.11")
    assert key != requirement_key(["tomli>=2"], "3.11")


def test_too_many_requirements_are_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        normalize(f"pkg{i}" for i in range(MAX_REQUIREMENTS + 1))


def test_requirements_files_say_no_more_than_a_list() -> None:
    text = "# deps\ntomli>=2  # toml\n\nattrs\n"
    assert parse_requirements_file(text) == ["tomli>=2", "attrs"]
    job = Job(code="x", requirements="requirements.txt", files={"requirements.txt": text})
    assert job.requirement_set() == ("attrs", "tomli>=2")
    with pytest.raises(ValidationError, match="pip option"):
        Job(code="x", requirements="r.txt",
            files={"r.txt": "--extra-index-url https://evil.example\ntomli\n"})


def test_jobs_and_manifests_check_requirements_when_built() -> None:
    assert Job(code="x", requirements=["Tomli", "tomli"]).requirements == ["tomli"]
    with pytest.raises(ValidationError, match="URL or path"):
        Job(code="x", requirements=["x @ https://e.example/x.whl"])
    with pytest.raises(ValidationError, match=r"give a list of package names such as \['tomli'\]"):
        Job(code="x", requirements="tomli")
    job = Job.from_manifest({"entrypoint": "main.py", "requirements": ["tomli>=2"]},
                            files={"main.py": "import tomli"})
    assert job.requirement_set() == ("tomli>=2",)
    with pytest.raises(InvalidJob, match="pip option"):
        Job.from_manifest({"entrypoint": "main.py", "requirements": ["-r x"]},
                          files={"main.py": ""})



def test_the_builder_adds_requirements_and_an_environment() -> None:
    job = JobBuilder().code("x").requirements("tomli").requirements("Attrs>1") \
        .environment("py311").build()
    assert (job.requirements, job.environment) == (["attrs>1", "tomli"], "py311")
