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
"""

from collections.abc import Iterator

import pytest

from vmamba_ref.testing.nan_buffers import nan_filled_empty
from vmamba_ref.testing.profiles import load_profile

pytest_plugins = ["vmamba_ref.testing.pytest_plugin"]

PROJECT_PACKAGES = ("vmamba_fast", "vmamba_ref")

load_profile()


@pytest.fixture(autouse=True)
def nan_filled_kernel_buffers() -> Iterator[None]:
    """Buffers that the project's kernels allocate with an `empty` factory start as NaN."""
    with nan_filled_empty(callers=PROJECT_PACKAGES):
        yield
