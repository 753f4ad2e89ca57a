"""Project-wide test setup: Hypothesis profiles, NaN-filled kernel buffers, the kernel-test kit.

- Hypothesis profile: `ci` when the `CI` environment variable is set (derandomized, no example
  database), else `dev`; `HYPOTHESIS_PROFILE=thorough` (or `--hypothesis-profile thorough`)
  runs ten to twenty times more examples. All set `deadline=None` for JIT warm-up. The
  profiles live in `vmamba_ref/testing/profiles.py`.
- Every test runs with NaN-filled fresh buffers for allocations made by the project's own
  packages (`torch.empty*`, `Tensor.new_empty`, `numpy.empty*` called from `vmamba_fast` or
  `vmamba_ref`), as flash-linear-attention's suite does: a kernel that leaves an output element
  unwritten returns NaN there and its test fails. Allocations by torch.nn, by other libraries
  and by the tests themselves are left alone, and graph capture is never touched.
- The kit's pytest plugin is loaded: fixtures `check_selective_scan`, `check_cross_scan`,
  `check_cross_merge`, `check_ss2d_core`, `check_kernel`, `vmamba_examples`, `nan_empty`
  (NaN-fills every allocation during a test, whoever makes it), and the option
  `--vmamba-examples N`.
- Under pytest-xdist (`-n auto`, the default in `pyproject.toml`) each worker process takes its
  share of the cores for torch's and Numba's thread pools, so that the workers together run as
  many threads as there are cores and never oversubscribe them. This is the test harness tuning
  its own processes; the library itself never changes these settings.
"""

import os
from collections.abc import Iterator

import pytest
import torch

from vmamba_ref import contract
from vmamba_ref.testing.nan_buffers import nan_filled_empty
from vmamba_ref.testing.profiles import load_profile

pytest_plugins = ["vmamba_ref.testing.pytest_plugin"]

PROJECT_PACKAGES = ("vmamba_fast", "vmamba_ref")

load_profile()


def xdist_workers() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config: pytest.Config) -> None:
    """The processes that tests start under xdist take one worker's share of the cores."""
    if xdist_workers() > 1:
        os.environ.setdefault(
            "OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // xdist_workers()))
        )


@pytest.fixture(autouse=True, scope="session")
def worker_share_of_the_cores() -> None:
    """Under xdist, this worker's Numba and torch thread pools take its share of the cores.

    Set in the thread that runs the tests (both counts belong to the calling thread), Numba's
    first: `numba.get_num_threads()` starts Numba's pool, which on GNU OpenMP resets the calling
    thread's OpenMP count, torch's (vmamba_fast/numba/config.py).
    """
    if xdist_workers() > 1:
        if contract.INSTALLED["numba"]:
            import numba

            numba.set_num_threads(max(1, numba.get_num_threads() // xdist_workers()))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def nan_filled_kernel_buffers() -> Iterator[None]:
    """Buffers that the project's kernels allocate with an `empty` factory start as NaN."""
    with nan_filled_empty(callers=PROJECT_PACKAGES):
        yield
