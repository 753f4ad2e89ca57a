"""The regression zoo (`vmamba_ref.testing.zoo`): the kit catches every bug class that shipped in
real selective-scan kernels, and the reference passes the same checks.

Each check runs under the derandomized `ci` profile, so the number of Hypothesis examples it
needs is the same on every run: it is printed (`pytest -s -n 0`), recorded as a JUnit property
(`record_property`), and quoted in docs/bugs.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vmamba_ref import selective_scan
from vmamba_ref.testing import KernelMismatchError, SelectiveScanCase, check_kernel
from vmamba_ref.testing.zoo import ZOO, selective_scan_closed_form

PROFILE = "ci"  # derandomized: the same examples on every run
CI_EXAMPLES = 50  # the ci profile's budget: each bug must be caught within it
BUGS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "bugs.md"


@pytest.mark.parametrize("bug", ZOO, ids=[bug.name for bug in ZOO])
def test_the_kit_catches_each_historical_bug(bug, record_property):
    with pytest.raises(KernelMismatchError) as caught:
        check_kernel(bug.kernel, bug.op, settings=PROFILE, deterministic=bug.deterministic)
    found = caught.value.examples_to_failure
    record_property("examples_to_failure", found)
    print(f"\n{bug.name}: caught after {found} example(s) ({bug.source})")
    assert 1 <= found <= CI_EXAMPLES
    assert bug.symptom in str(caught.value)


@pytest.mark.parametrize("deterministic", [False, True])
def test_the_reference_passes_the_same_checks(deterministic):
    report = check_kernel(
        selective_scan,
        "selective_scan",
        settings=PROFILE,
        max_examples=20,
        deterministic=deterministic,
    )
    assert report.examples == report.gradient_examples == 20


def test_closed_form_is_nan_at_state_size_16_with_vmamba_init():
    # A hand-picked hard case beside the generated ones: A = -1 .. -16 and step sizes up to
    # about 0.15 over one chunk of 64 steps take A * cumsum(dt) far below float32's exp range.
    case = SelectiveScanCase(1, 1, 4, 64, 16, init="mamba", seed=9)
    inputs = case.build()
    assert bool(selective_scan(**inputs).isfinite().all())
    assert bool(selective_scan_closed_form(**inputs).isnan().any())
    wide = SelectiveScanCase(1, 1, 4, 64, 16, dtype=torch.float64, init="mamba", seed=9).build()
    assert bool(selective_scan_closed_form(**wide).isfinite().all())  # float64's range holds it


def test_each_bug_is_described_on_the_docs_page():
    text = BUGS_PAGE.read_text()
    for bug in ZOO:
        assert f"`{bug.name}`" in text
