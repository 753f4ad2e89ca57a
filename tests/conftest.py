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
- Fixtures for the official VMamba code: `official_checkout` (the checkout that the
  environment variable VMAMBA_OFFICIAL names; the test skips without one) and
  `official_stand_ins` (a folder to put on PYTHONPATH with minimal timm and einops, which the
  official model file imports and which need not be installed here).
- Under pytest-xdist (`-n auto`, the default in `pyproject.toml`) each worker process takes its
  share of the cores for torch's and Numba's thread pools, so that the workers together run as
  many threads as there are cores and never oversubscribe them. This is the test harness tuning
  its own processes; the library itself never changes these settings.
"""

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

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


# ------------------------------------------------------------------------------------------------
# The official VMamba code, for the tests that compare with it
# ------------------------------------------------------------------------------------------------

OFFICIAL_STAND_INS = {
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers/__init__.py": '''
        """Stand-in for the two names official vmamba.py imports from timm, in plain torch."""
        from torch import nn


        class DropPath(nn.Module):
            def __init__(self, drop_prob=0.0):
                super().__init__()
                self.drop_prob = drop_prob

            def forward(self, x):
                if self.drop_prob == 0.0 or not self.training:
                    return x
                keep = 1.0 - self.drop_prob
                mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
                return x * mask / keep


        def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
            return nn.init.trunc_normal_(tensor, mean, std, a, b)
        ''',
    "einops/__init__.py": '''
        """Stand-in: official mamba2/ssd_minimal.py imports these; building a model calls neither."""


        def rearrange(*args, **kwargs):
            raise RuntimeError("einops stand-in of tests/conftest.py was called: building a model must not call einops")


        repeat = rearrange
        ''',
}


@pytest.fixture
def official_checkout() -> Path:
    """The root of the official VMamba checkout named by VMAMBA_OFFICIAL; skips without one."""
    root = os.environ.get("VMAMBA_OFFICIAL")
    if not root or not (Path(root) / "classification" / "models" / "vmamba.py").is_file():
        pytest.skip("no official VMamba checkout: set VMAMBA_OFFICIAL to its root")
    return Path(root)


@pytest.fixture
def official_stand_ins(tmp_path: Path) -> Path:
    """A folder for PYTHONPATH holding `OFFICIAL_STAND_INS`: DropPath and trunc_normal_ in plain
    torch for timm, and einops functions that raise (building a model never calls them)."""
    folder = tmp_path / "stand_ins"
    for name, text in OFFICIAL_STAND_INS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder
