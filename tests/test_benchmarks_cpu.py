"""benchmarks/bench_cpu.py and bench_models_cpu.py run: their --quick modes, seconds of tiny
shapes and models, in a subprocess.

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


def test_bench_models_cpu_quick_runs_every_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_models_cpu.py"), "--quick", "--no-compile", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for kind in ("inference", "training step"):
        for dtype in ("float32", "bfloat16"):
            assert f"## {kind}, {dtype}, batch 2 at 64x64" in result.stdout, result.stdout
    # Each bfloat16 table gives the gain over float32 from calls interleaved in its own rounds.
    gains = [line for line in result.stdout.splitlines() if "over float32, the two interleaved" in line]
    assert len(gains) == 2 and all(line.startswith("VMamba-mini (numba) in bfloat16") for line in gains), gains
    # In inference also the other bfloat16 path, the model cast once, in the same rounds.
    cast_once = [line for line in result.stdout.splitlines() if "as a bfloat16 model" in line]
    assert len(cast_once) == 1 and "over float32, the same rounds:" in cast_once[0], cast_once
