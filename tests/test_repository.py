"""Claims about the repository itself: CI runs exactly the README's test command, the suite's
parallel workers share the cores without oversubscribing them, and the code is lint-clean."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_readme_demo_command_runs_vmamba_demo():
    assert any(c.endswith("vmamba demo") for c in readme_commands())


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2, reason="runs in one pytest process"
)
def test_parallel_workers_together_run_no_more_torch_threads_than_there_are_cores():
    """Each xdist worker takes its share (tests/conftest.py); two workers that each ran torch's
    default of one thread per core would spin twice as many OpenMP threads as there are cores."""
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert workers * torch.get_num_threads() <= max(workers, os.cpu_count())
    assert os.environ["OMP_NUM_THREADS"] == str(torch.get_num_threads())  # for started processes
