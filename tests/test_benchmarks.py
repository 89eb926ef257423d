"""Benchmarks stay runnable: each runs in its quick mode and prints its table.

No timing is asserted here; the figures are read from full runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_benchmark_prints_ratios_for_each_size() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hooks.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [
        (shape, n) for shape in ("observe", "transform") for n in ("1", "5", "20")]
    assert all(float(r[4]) > 0 for r in rows)


@pytest.mark.slow
def test_sandbox_benchmark_prints_overhead_and_latency() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sandbox.py"), "--quick"],
                          capture_output=True, text=True, timeout=180, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("before the view", "hardened, cold", "hardened, warm shell",
                "hardened, warm python"):
        assert f"run_in_sandbox {row}" in proc.stdout and "difference" in proc.stdout
    assert re.search(r"round trip sandrun print\(1\) job +p50 ", proc.stdout), proc.stdout
    assert re.search(r"round trip bare Celery no-op +p50 ", proc.stdout), proc.stdout
    assert re.search(r"round trip sandrun print\(1\) job .* p90 +[0-9.]+ ms", proc.stdout)
    assert re.search(r"drain 20 print\(1\): sandrun -c 2 +[0-9.]+ +[0-9.]+ /s +ratio to "
                     r"subprocess\.run [0-9.]+", proc.stdout), proc.stdout


@pytest.mark.slow
def test_overhead_benchmark_prints_ratio_and_latency() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "median ratio" in proc.stdout
    assert "latency sandrun + 3 plugins:" in proc.stdout


@pytest.mark.slow
def test_brokers_benchmark_prints_redis_beside_rabbitmq() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "brokers.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1]) > 0 < float(r[2])
                                                      for r in rows)
    assert "median ratio rabbitmq/redis" in proc.stdout
    for broker in ("redis", "rabbitmq"):
        assert re.search(rf"submit-to-result {broker}: +p50 ", proc.stdout), proc.stdout


@pytest.mark.slow
def test_scaling_benchmark_prints_efficiency_tables() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("efficiency") == 2
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "1", "2"] and all(float(r[4]) > 0 for r in rows)


@pytest.mark.slow
def test_throughput_benchmark_prints_each_system_and_the_ratios() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"),
                           "--quick"], capture_output=True, text=True, timeout=600, check=False,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.split("medians:")[1]
    rows = [line.split() for line in table.splitlines()
            if line.split()[:1] in (["celery"], ["sandrun"], ["dramatiq"])]
    assert [r[0] for r in rows] == ["celery", "sandrun", "dramatiq"]
    assert all(float(r[-6]) > 0 for r in rows)  # jobs/s, CPU, Redis CPU, commands, trips, round
    assert "ratio sandrun prefork 1x2 / celery prefork 1x2:" in proc.stdout
    assert "ratio best sandrun (sandrun prefork 1x2) / best dramatiq (dramatiq 2x8):" in \
        proc.stdout


def test_auth_benchmark_prints_each_step_and_the_added_cost() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "auth.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:4]]
    assert [r[0] for r in rows] == ["baseline", "sign", "verify"]
    assert all(float(r[1]) > 0 for r in rows)
    assert "sign + verify add" in proc.stdout


@pytest.mark.slow
def test_cli_benchmark_times_each_command_in_both_trees() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cli.py"), "--quick",
                           "--baseline", str(ROOT)],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sandrun submit --code 'print(1)' --wait" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == 2 * 6 and all(r[-1] == "(n=2)" for r in rows)


@pytest.mark.slow
def test_logs_benchmark_prints_both_shapes_side_by_side() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logs.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for shape in ("lines", "blocks"):
        assert re.search(rf"{shape}: a job printing 2 MB, 3 rounds each, alternating; "
                         r"2\.0 MB reached the stream", proc.stdout), proc.stdout
    rows = re.findall(r"^(job wall time|whole call) +([0-9.]+) s +([0-9.]+) s +([0-9.]+)$",
                      proc.stdout, re.MULTILINE)
    assert len(rows) == 4 and all(float(ratio) > 0 for *_, ratio in rows)


@pytest.mark.slow
def test_consensus_benchmark_prints_both_latencies_and_the_difference() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "consensus.py"),
                           "--quick"], capture_output=True, text=True, timeout=300,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("plain print(1)", "2-of-3 print(1)"):
        assert re.search(rf"submit to result  {re.escape(name)} +p50 ", proc.stdout), proc.stdout
    assert re.search(r"added by 2-of-3   p50 [+-][0-9.]+ ms   ratio [0-9.]+x", proc.stdout)


def test_make_bench_runs_every_benchmark() -> None:
    """`make bench` is the one command that runs them all (issue 15): a benchmark with a
    ``__main__`` block that the Makefile does not list would silently never run."""
    makefile = (ROOT / "Makefile").read_text()
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"benchmarks/(\w+)\.py", bench))
    runnable = {path.stem for path in (ROOT / "benchmarks").glob("*.py")
                if 'if __name__ == "__main__":' in path.read_text()}
    assert runnable - listed == set(), "add these to the Makefile's bench target"
