"""Tools to test any implementation of VMamba's scan operators against the reference.

Property-test your own kernel in a few lines (docs/testing.md walks through it):

    from vmamba_ref.testing import check_selective_scan
    check_selective_scan(my_selective_scan)   # raises AssertionError with a shrunk counterexample

| module          | what it holds                                                                  |
|-----------------|--------------------------------------------------------------------------------|
| `strategies`    | Hypothesis strategies of valid inputs: `selective_scan_inputs()`, ...          |
| `cases`         | the concrete cases those strategies draw, each rebuildable by a pasteable call |
| `adapt`         | `adapt`, `Capabilities`: test a kernel as it is, through its own signature     |
| `properties`    | `check_cross_scan`, ..., `check_kernel`, `make_test`: property tests           |
| `compare`       | `assert_matches_reference(fn, inputs, op=...)`: one comparison, full report    |
| `runs`          | the reference ops by name, fresh input copies, the record of one comparison    |
| `mismatch`      | `Rule` and `mismatch_report`: allowed error, and where a result exceeds it     |
| `diagnose`      | names the likely bug behind a mismatch                                         |
| `tolerances`    | the one tolerance table, keyed by backend and dtype                            |
| `nan_buffers`   | `nan_filled_empty()`: NaN-filled `empty` buffers so unwritten elements fail    |
| `profiles`      | Hypothesis profiles `dev`, `ci`, `thorough`                                    |
| `mutants`       | kernels with planted bugs, which the kit must catch                            |
| `zoo`           | kernels reproducing bugs that shipped in real scan kernels (docs/bugs.md)      |
| `pytest_plugin` | opt-in fixtures and `--vmamba-examples` (`-p vmamba_ref.testing.pytest_plugin`) |
"""

import importlib
from typing import Any

from vmamba_ref.testing.tolerances import TOLERANCES, Tolerance, tolerance

# Everything but the tolerance table loads on first use, so that `tolerances` (and `cases`,
# `compare`, `nan_buffers`) work without Hypothesis, which only the test extra installs.
_LAZY = {
    "Capabilities": "adapt",
    "adapt": "adapt",
    "capabilities_from_signature": "adapt",
    "INITS": "cases",
    "CrossMergeCase": "cases",
    "CrossScanCase": "cases",
    "KernelInputs": "cases",
    "SS2DCoreCase": "cases",
    "SelectiveScanCase": "cases",
    "CheckReport": "properties",
    "KernelMismatchError": "properties",
    "check_cross_merge": "properties",
    "check_cross_scan": "properties",
    "check_kernel": "properties",
    "check_selective_scan": "properties",
    "check_ss2d_core": "properties",
    "make_test": "properties",
    "assert_matches_reference": "compare",
    "mismatch_report": "mismatch",
    "nan_filled_empty": "nan_buffers",
    "load_profile": "profiles",
    "cross_merge_inputs": "strategies",
    "cross_scan_inputs": "strategies",
    "selective_scan_inputs": "strategies",
    "ss2d_core_inputs": "strategies",
}


def __getattr__(name: str) -> Any:
    """Import the public names of the kit's modules on first access."""
    if name not in _LAZY:
        raise AttributeError(f"module 'vmamba_ref.testing' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"vmamba_ref.testing.{_LAZY[name]}")
    except ModuleNotFoundError as err:
        if err.name == "hypothesis":
            raise ModuleNotFoundError(
                f"vmamba_ref.testing.{name} needs Hypothesis: pip install 'vmamba[test]'",
                name="hypothesis",
            ) from err
        raise
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "INITS",
    "TOLERANCES",
    "Capabilities",
    "CheckReport",
    "CrossMergeCase",
    "CrossScanCase",
    "KernelInputs",
    "KernelMismatchError",
    "SS2DCoreCase",
    "SelectiveScanCase",
    "Tolerance",
    "adapt",
    "assert_matches_reference",
    "capabilities_from_signature",
    "check_cross_merge",
    "check_cross_scan",
    "check_kernel",
    "check_selective_scan",
    "check_ss2d_core",
    "cross_merge_inputs",
    "cross_scan_inputs",
    "load_profile",
    "make_test",
    "mismatch_report",
    "nan_filled_empty",
    "selective_scan_inputs",
    "ss2d_core_inputs",
    "tolerance",
]
