"""Claims of vmamba_fast/triton checked through Triton's interpreter, in subprocesses.

TRITON_INTERPRET=1 only takes effect if it is set before triton is imported, and other test
files of this session may have imported triton already; so the interpreter runs in a fresh
process. The property tests themselves live in tests/triton_interpret/interpreted_kernels.py,
which this session does not collect.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmamba_ref.contract import is_available

ROOT = Path(__file__).resolve().parents[1]
INNER = ROOT / "tests" / "triton_interpret" / "interpreted_kernels.py"
BENCHMARK = ROOT / "benchmarks" / "bench_gpu.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not is_available("triton"), reason="triton is not installed"),
]


def run_interpreted(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_triton_kernels_match_the_reference_in_the_interpreter():
    result = run_interpreted(
        "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", str(INNER), timeout=900
    )
    assert result.returncode == 0, (
        f"{INNER.relative_to(ROOT)} failed under TRITON_INTERPRET=1:\n"
        + result.stdout[-30000:]
        + result.stderr[-5000:]
    )
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-3000:]


def test_gpu_benchmark_runs_on_tiny_shapes_in_the_interpreter():
    result = run_interpreted(str(BENCHMARK), "--interpret", timeout=300)
    assert result.returncode == 0, result.stdout[-10000:] + result.stderr[-10000:]
    assert "selective scan, bfloat16" in result.stdout
    assert "images/s" in result.stdout
    # the model row ran in its worker process and reached the table, measured
    row = "| VMamba-mini | ours, backend=triton | fp32 | inference | "
    [line] = [line for line in result.stdout.splitlines() if line.startswith(row)]
    assert line.endswith("| ok |"), line
    assert "1 rows, 1 measured, 0 failed" in result.stdout
