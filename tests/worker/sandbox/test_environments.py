"""Environments and requirement layers with the real sandbox, pip and a hand-made wheel
cache (tests/support/wheels.py): no network is needed, and the job has none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.wheels import make_wheel
from worker.models import Job
from worker.sandbox.executor import SandboxConfig, SandboxRun, run_in_sandbox
from worker.sandbox.isolation import job_user_ids, probe
from worker.sandbox.layers import layer_for, missing_names, pip_command
from worker.sandbox.prepare import EnvironmentUnavailable

SUPPORT = probe(job_user_ids(SandboxConfig().job_user))
IMPORTS = """
import json, os, sandrun_tiny, sandrun_dep
here = os.path.dirname(sandrun_tiny.__file__)
try:
    open(os.path.join(here, "planted.py"), "w")
    writable = True
except OSError:
    writable = False
lines = open("/proc/net/dev").read().splitlines()[2:]
print(json.dumps({"tiny": sandrun_tiny.VERSION, "dep": sandrun_dep.VERSION, "layer": here,
                  "writable": writable, "interfaces": [l.split(":")[0].strip() for l in lines]}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory job users may traverse (pytest's tmp_path is 0700 to them)."""
    path = Path(tempfile.mkdtemp(prefix="sandrun-envtest-"))
    os.chmod(path, 0o711)
    yield path
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def config(tmp_path: Path, shared_dir: Path) -> SandboxConfig:
    cache = tmp_path / "wheels"
    make_wheel(cache, "sandrun-tiny", "1.0", "sandrun_tiny", requires=("sandrun-dep>=0.5",))
    make_wheel(cache, "sandrun-dep", "0.5", "sandrun_dep")
    return SandboxConfig(wheel_cache=str(cache), layers_dir=str(shared_dir / "layers"))


def timed(job: Job, config: SandboxConfig) -> tuple[SandboxRun, float]:
    """The run and how long the job took to start (the call's time less the job's own)."""
    began = time.monotonic()
    run = run_in_sandbox(job, config)
    return run, time.monotonic() - began - run.wall_seconds


def test_requirements_run_from_the_cache_and_the_second_job_reuses_the_layer(
        config: SandboxConfig) -> None:
    job = Job(code=IMPORTS, requirements=["sandrun-tiny"])
    first, first_start = timed(job, config)
    assert first.outcome == "completed", first
    seen = json.loads(first.stdout)
    assert (seen["tiny"], seen["dep"]) == ("1.0", "0.5")  # the dependency came along
    assert not seen["writable"]
    if SUPPORT.view:
        assert "network" in first.isolation.split("+")
        assert seen["interfaces"] == ["lo"]  # its network is off
    layers = list(Path(str(config.layers_dir)).iterdir())
    assert [p.name for p in layers] == [Path(seen["layer"]).parent.name]

    for wheel in Path(str(config.wheel_cache)).iterdir():  # a rebuild could not succeed now
        wheel.unlink()
    second, second_start = timed(Job(code=IMPORTS, requirements=["Sandrun_Tiny"]), config)
    assert second.outcome == "completed", second
    assert json.loads(second.stdout)["layer"] == seen["layer"]
    print(f"\nstart with a new layer {first_start:.3f}s, reusing it {second_start:.3f}s")


def test_a_requirement_the_cache_cannot_satisfy_ends_environment_error(
        config: SandboxConfig) -> None:
    for missing in ("no-such-package", "sandrun-tiny>=2"):
        run = run_in_sandbox(Job(code="print('ran')", requirements=[missing]), config)
        assert run.outcome == "environment_error", run
        assert missing in str(run.error) and run.stdout == ""
    assert not any(Path(str(config.layers_dir)).iterdir())  # no half layer left behind


def test_a_requirements_file_among_the_job_files(config: SandboxConfig) -> None:
    job = Job(code=IMPORTS, requirements="deps/requirements.txt",
              files={"deps/requirements.txt": "# what the job needs\nsandrun-tiny==1.0\n"})
    run = run_in_sandbox(job, config)
    assert run.outcome == "completed", run
    assert json.loads(run.stdout)["tiny"] == "1.0"


def test_without_a_wheel_cache_requirements_are_refused_not_ignored() -> None:
    run = run_in_sandbox(Job(code="print('ran')", requirements=["sandrun-tiny"]))
    assert run.outcome == "environment_error"
    assert "SANDRUN_WHEEL_CACHE" in str(run.error) and run.stdout == ""


def _venv(root: Path, name: str) -> Path:
    """A virtualenv of the system's Python with one module of its own."""
    prefix = root / name
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(prefix)],
                   check=True)
    site = next(prefix.glob("lib/python3*/site-packages"))
    (site / "env_marker.py").write_text(f"NAME = {name!r}\n")
    return prefix


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs /usr/bin/python3")
def test_a_named_environment_runs_the_job_and_is_read_only(
        config: SandboxConfig, shared_dir: Path) -> None:
    envs = shared_dir / "envs"
    envs.mkdir(mode=0o755)
    prefix = _venv(envs, "tiny-env")
    config = replace(config, environments_dir=str(envs))
    code = ("import sys, json, env_marker, sandrun_tiny\ntry:\n"
            "    open(sys.prefix + '/planted', 'w'); w = True\nexcept OSError:\n    w = False\n"
            "print(json.dumps([sys.prefix, env_marker.NAME, w]))")
    run = run_in_sandbox(Job(code=code, environment="tiny-env",
                             requirements=["sandrun-tiny"]), config)
    assert run.outcome == "completed", run
    assert json.loads(run.stdout) == [str(prefix), "tiny-env", False]

    unknown = run_in_sandbox(Job(code="print('ran')", environment="nope"), config)
    assert unknown.outcome == "environment_error"
    assert "'nope'" in str(unknown.error) and "tiny-env" in str(unknown.error)


def test_without_environments_a_named_one_is_refused() -> None:
    run = run_in_sandbox(Job(code="print('ran')", environment="tiny-env"))
    assert run.outcome == "environment_error"
    assert "SANDRUN_ENVIRONMENTS_DIR" in str(run.error) and run.stdout == ""


def test_missing_names_are_read_from_pips_error() -> None:
    stderr = ("ERROR: Could not find a version that satisfies the requirement tomli>=9 "
              "(from versions: 2.0.1)\nERROR: No matching distribution found for tomli>=9\n")
    assert missing_names(stderr) == ["tomli>=9"]
    assert missing_names("ERROR: something else") == []


def test_pip_never_asks_an_index_nor_builds_from_source() -> None:
    cmd = pip_command(("tomli",), "/cache", "/layer", "3.11")
    for flag in ("--isolated", "--no-index", "--no-build-isolation"):
        assert flag in cmd
    assert cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert cmd[-2:] == ["--", "tomli"]  # requirements can never be read as options


def test_two_builders_of_one_set_at_once_leave_one_whole_layer(config: SandboxConfig) -> None:
    layers = Path(str(config.layers_dir))
    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: layer_for(
            ("sandrun-tiny",), wheel_cache=config.wheel_cache, layers_dir=str(layers),
            python="3.11"), range(2)))
    assert built[0] == built[1]
    assert [p.name for p in layers.iterdir()] == [Path(built[0]).name]  # no .build-* left
    assert (Path(built[0]) / "sandrun_tiny" / "__init__.py").is_file()


def test_a_planted_layers_directory_is_refused(config: SandboxConfig, shared_dir: Path) -> None:
    (shared_dir / "elsewhere").mkdir()
    (shared_dir / "planted").symlink_to(shared_dir / "elsewhere")
    with pytest.raises(EnvironmentUnavailable, match="link or another user's"):
        layer_for(("sandrun-tiny",), wheel_cache=config.wheel_cache,
                  layers_dir=str(shared_dir / "planted"), python="3.11")


def test_requirements_of_a_job_that_is_not_python_run_nothing(config: SandboxConfig) -> None:
    run = run_in_sandbox(Job(code="echo ran", interpreter="bash",
                             requirements=["sandrun-tiny"]), config)
    assert run.outcome == "environment_error" and "'bash'" in str(run.error)
    assert not Path(str(config.layers_dir)).exists()  # nothing was installed, nor run


def test_an_environment_that_is_the_whole_root_is_refused(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "everything").symlink_to("/")  # "/bin/python3" exists on merged-/usr hosts
    if not Path("/bin/python3").exists():
        pytest.skip("needs /bin/python3")
    run = run_in_sandbox(Job(code="print('ran')", environment="everything"),
                         SandboxConfig(environments_dir=str(envs)))
    assert run.outcome == "environment_error" and "two levels deep" in str(run.error)
    assert run.stdout == ""
