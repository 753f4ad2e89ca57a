"""benchmarks/bench_cpu.py runs: its --quick mode, a few seconds of tiny shapes, in a subprocess.

One thread: this checks that the script works, not timings, and a two-thread run on a busy
machine can stall in every parallel region of torch and Numba alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_cpu_quick_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cpu.py"), "--quick", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for section in (
        "stream triad",
        "vectorized exp",
        "Selective scan",
        "Roofline",
        "Fused SS2D core",
    ):
        assert section in result.stdout, result.stdout
    # The kernel figures come twice, each labelled with the allocator it was measured under.
    assert "(numba, ms; plain process)" in result.stdout, result.stdout
    assert "(numba, ms; allocator tuned: freed memory kept)" in result.stdout, result.stdout
