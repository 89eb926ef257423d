"""Benchmarks stay runnable: each runs in its quick mode and prints its table.

No timing is asserted here; the figures are read from full runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_benchmark_prints_ratios_for_each_size() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hooks.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [
        (shape, n) for shape in ("observe", "transform") for n in ("1", "5", "20")]
    assert all(float(r[4]) > 0 for r in rows)
