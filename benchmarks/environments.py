"""What a job's requirements cost at start: building the layer once, reusing it after.

With the sandbox's defaults on this host, times from ``run_in_sandbox`` being called to
the job starting (the call's time less the job's own wall time), per round:

* plain: a job without requirements (the baseline; it may use a warm sandbox);
* first: a job whose requirement set has no layer yet (the worker's pip installs it
  from a wheel cache made of hand-written wheels, tests/support/wheels.py);
* reused: the same set again (the layer exists: nothing is installed).

Each round uses a new layers directory, so "first" really builds. Prints medians.

Run: ``.venv/bin/python benchmarks/environments.py`` (``--rounds N``, default 5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.wheels import make_wheel  # noqa: E402
from worker.models import Job  # noqa: E402
from worker.sandbox.executor import SandboxConfig, run_in_sandbox  # noqa: E402

CODE = "import sandrun_tiny\nprint(sandrun_tiny.VERSION)"


def start(job: Job, config: SandboxConfig) -> float:
    began = time.monotonic()
    run = run_in_sandbox(job, config)
    if run.outcome != "completed":
        raise SystemExit(f"the job ended {run.outcome}: {run.error or run.stderr}")
    return time.monotonic() - began - run.wall_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    top = Path(tempfile.mkdtemp(prefix="sandrun-bench-envs-"))
    os.chmod(top, 0o711)  # job users traverse it to the layer
    times: dict[str, list[float]] = {"plain": [], "first": [], "reused": []}
    try:
        make_wheel(top / "wheels", "sandrun-tiny", "1.0", "sandrun_tiny")
        for n in range(rounds):
            config = SandboxConfig(wheel_cache=str(top / "wheels"),
                                   layers_dir=str(top / f"layers-{n}"))
            times["plain"].append(start(Job(code="print(1)"), config))
            job = Job(code=CODE, requirements=["sandrun-tiny"])
            times["first"].append(start(job, config))
            times["reused"].append(start(job, config))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    for name, values in times.items():
        print(f"{name:7} median start {statistics.median(values) * 1000:8.1f} ms "
              f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})")


if __name__ == "__main__":
    main()
