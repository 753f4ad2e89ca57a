"""The kernel-testing kit (vmamba_ref.testing) tested on itself.

Facts checked here:
- the reference passes against itself for all four ops, forward and gradients, in every dtype;
- every planted bug in `mutants.py` fails the check, with a report that names the bug, and the
  count of examples Hypothesis needed is recorded (`record_property`, shown in JUnit XML);
- the strategies only generate valid inputs within the requested bounds;
- a failed comparison reports max and mean error, the first bad indices with both values, NaN
  and inf mismatches, shape and dtype mismatches;
- NaN-filled buffers catch an unwritten element, with or without the kit's own fill.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from vmamba_ref import cross_merge, cross_scan, selective_scan, ss2d_core
from vmamba_ref.testing import (
    CrossMergeCase,
    CrossScanCase,
    KernelMismatchError,
    SelectiveScanCase,
    SS2DCoreCase,
    assert_matches_reference,
    check_cross_merge,
    check_cross_scan,
    check_kernel,
    check_selective_scan,
    check_ss2d_core,
    cross_merge_inputs,
    cross_scan_inputs,
    make_test,
    mismatch_report,
    nan_filled_empty,
    selective_scan_inputs,
    ss2d_core_inputs,
    tolerance,
)
from vmamba_ref.testing.mismatch import Rule
from vmamba_ref.testing.mutants import MUTANTS, cross_merge_unwritten_element
from vmamba_ref.testing.runs import REFERENCE_OPS, copy_layout

PROFILE = "ci"  # derandomized: the same examples on every run
OPS = list(REFERENCE_OPS)
VALID = settings(max_examples=30, deadline=None, derandomize=True, database=None)


# ---- the reference passes against itself -------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_reference_passes_against_itself(op):
    report = check_kernel(REFERENCE_OPS[op], op, check_grad=True, max_examples=20, settings=PROFILE)
    assert report.examples == report.gradient_examples == 20


@pytest.mark.parametrize(
    "check, op",
    [
        (check_cross_scan, "cross_scan"),
        (check_cross_merge, "cross_merge"),
        (check_selective_scan, "selective_scan"),
        (check_ss2d_core, "ss2d_core"),
    ],
)
def test_reference_passes_in_low_precision(check, op):
    report = check(
        REFERENCE_OPS[op], dtypes=(torch.float16, torch.bfloat16), max_examples=8, settings=PROFILE
    )
    assert report.gradient_examples == 8


def test_forward_only_check_passes_inputs_without_grad():
    def no_autograd(x):
        assert not x.requires_grad
        return torch.from_numpy(cross_scan(x).numpy())

    report = check_cross_scan(no_autograd, check_grad=False, max_examples=5, settings=PROFILE)
    assert report.gradient_examples == 0


# ---- planted bugs are caught, and the report names them ----------------------------------


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_planted_bug_is_caught_and_named(mutant, record_property):
    with pytest.raises(KernelMismatchError) as caught:
        check_kernel(mutant.kernel, mutant.op, check_grad=mutant.check_grad, settings=PROFILE)
    err = caught.value
    record_property("examples_to_failure", err.examples_to_failure)
    assert mutant.symptom in str(err), str(err)
    assert 1 <= err.examples_to_failure <= 50
    assert err.counterexample.endswith(".build()")
    assert err.counterexample in str(err)
    assert isinstance(err, AssertionError)


def test_unwritten_element_is_caught_by_the_project_fixture_alone():
    # nan_fill=False: only tests/conftest.py's autouse fixture poisons the mutant's torch.empty.
    with pytest.raises(KernelMismatchError, match="never written"):
        check_cross_merge(cross_merge_unwritten_element, nan_fill=False, settings=PROFILE)


def test_nan_empty_fixture_fills_every_allocation(nan_empty):
    assert torch.empty(2, 3).isnan().all()
    assert torch.empty_like(torch.zeros(4)).isnan().all()
    assert torch.zeros(1).new_empty(5).isnan().all()
    assert np.isnan(np.empty(3)).all()
    assert torch.empty(3, dtype=torch.int64).dtype == torch.int64  # integers untouched


def test_nan_filled_empty_restores_the_factories():
    originals = (
        torch.empty,
        torch.empty_like,
        torch.empty_strided,
        torch.Tensor.new_empty,
        np.empty,
    )
    with nan_filled_empty(), nan_filled_empty(callers=("nowhere",)):
        assert torch.empty(3).isnan().all()  # the outer block fills whatever the inner leaves
    assert (
        torch.empty,
        torch.empty_like,
        torch.empty_strided,
        torch.Tensor.new_empty,
        np.empty,
    ) == originals


def test_nan_filled_empty_with_callers_fills_only_their_buffers():
    kernel_module = {"__name__": "vmamba_fast.some_kernel", "torch": torch}
    exec("def allocate(out):\n    return torch.empty(3, out=out)", kernel_module)
    mine, theirs = torch.ones(3), torch.ones(3)
    with nan_filled_empty(callers=("vmamba_fast",)):
        torch.empty(3, out=mine)  # allocated here, in a test module: left alone
        kernel_module["allocate"](theirs)
    assert torch.equal(mine, torch.ones(3)) and theirs.isnan().all()


# ---- strategies generate valid inputs within their bounds --------------------------------


def _assert_finite(out):
    for t in out if isinstance(out, tuple) else (out,):
        assert torch.isfinite(t).all()


@VALID
@given(
    selective_scan_inputs(
        dtypes=(torch.float16, torch.float64),
        max_batch=3,
        routes=(1, 2, 4),
        max_channels=2,
        max_length=17,
        max_state=3,
        requires_grad=True,
    )
)
def test_selective_scan_inputs_are_valid(inputs):
    u, B = inputs["u"], inputs["B"]
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    assert b <= 3 and k in (1, 2, 4) and kd // k <= 2 and kd % k == 0 and l <= 17 and n <= 3
    assert u.dtype in (torch.float16, torch.float64)
    assert inputs["A"].dtype == (torch.float64 if u.dtype == torch.float64 else torch.float32)
    assert (inputs["A"] < 0).all()
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            assert value.requires_grad and torch.isfinite(value).all(), name
    out = selective_scan(**inputs)
    assert isinstance(out, tuple) == inputs["return_last_state"]
    _assert_finite(out)


@VALID
@given(ss2d_core_inputs(max_batch=2, max_channels=2, max_side=5, max_state=2))
def test_ss2d_core_inputs_are_valid(inputs):
    b, d, h, w = inputs["x"].shape
    assert b <= 2 and d <= 2 and h <= 5 and w <= 5 and inputs["B"].shape[2] <= 2
    _assert_finite(ss2d_core(**inputs))


@VALID
@given(cross_scan_inputs(dtypes=(torch.bfloat16,), max_batch=1, max_channels=2, max_side=4))
def test_cross_scan_inputs_are_valid(inputs):
    b, d, h, w = inputs["x"].shape
    assert b == 1 and d <= 2 and h <= 4 and w <= 4 and inputs["x"].dtype == torch.bfloat16
    assert cross_scan(**inputs).shape == (b, 4, d, h * w)


@VALID
@given(cross_merge_inputs(max_side=3, contiguous=False))
def test_cross_merge_inputs_are_valid(inputs):
    ys = inputs["ys"]
    assert ys.shape[1] == 4 and max(ys.shape[3:]) <= 3
    assert not ys.is_contiguous() or ys.numel() == 1
    _assert_finite(cross_merge(**inputs))


@VALID
@given(
    selective_scan_inputs(
        with_D=True,
        with_delta_bias=False,
        delta_softplus=False,
        with_initial_state=True,
        return_last_state=True,
        contiguous=True,
        inits=("huge_step", "tiny_step"),
    )
)
def test_pinned_options_are_respected(inputs):
    assert inputs["D"] is not None and inputs["delta_bias"] is None
    assert inputs["initial_state"] is not None and inputs["return_last_state"]
    assert not inputs["delta_softplus"] and (inputs["delta"] > 0).all()  # dt stays positive
    assert all(v.is_contiguous() for v in inputs.values() if isinstance(v, torch.Tensor))
    _assert_finite(selective_scan(**inputs))


def test_strategies_cover_the_awkward_shapes():
    seen = set()

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(ss2d_core_inputs(max_side=9))
    def record(inputs):
        x = inputs["x"]
        seen.add(("h != w", x.shape[2] != x.shape[3]))
        seen.add(("one pixel", x.shape[2] * x.shape[3] == 1))
        seen.add(("block boundary", x.shape[2] in (7, 8, 9)))
        seen.add(
            (
                "strided",
                any(not v.is_contiguous() for v in inputs.values() if isinstance(v, torch.Tensor)),
            )
        )
        seen.add(("no D", inputs["D"] is None))

    record()
    for fact in ("h != w", "one pixel", "block boundary", "strided", "no D"):
        assert (fact, True) in seen, fact


@pytest.mark.parametrize("bad", [{"max_side": 0}, {"dtypes": ()}, {"dtypes": (torch.int32,)}])
def test_strategies_reject_bad_options(bad):
    with pytest.raises(ValueError):
        cross_scan_inputs(**bad)
    with pytest.raises(ValueError):
        selective_scan_inputs(inits=("nonsense",))


def test_case_repr_rebuilds_the_same_inputs():
    case = SelectiveScanCase(
        batch=1,
        routes=2,
        channels=2,
        length=5,
        state=3,
        init="random",
        seed=7,
        noncontiguous=("u", "B"),
        with_initial_state=True,
    )
    inputs = case.build()
    again = eval(repr(inputs), {"SelectiveScanCase": SelectiveScanCase, "torch": torch})
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, again[name]) and value.stride() == again[name].stride()
    assert not inputs["u"].is_contiguous()
    with pytest.raises(ValueError, match="noncontiguous"):
        SelectiveScanCase(1, 4, 1, 2, 1, noncontiguous=("z",)).build()


# ---- the mismatch report -----------------------------------------------------------------


def test_report_gives_errors_indices_and_values():
    ref = torch.arange(12.0).view(3, 4)
    fast = ref.clone()
    fast[1, 2] += 0.5
    fast[2, 3] = math.nan
    fast[0, 1] = math.inf
    report = mismatch_report("output", fast, ref, Rule(tolerance(torch.float32)))
    assert "3 of 12 elements differ" in report
    assert "max abs error 5.000e-01 at (1, 2) (fn 6.5, reference 6)" in report
    assert "mean abs error" in report
    assert "(0, 1): fn inf, reference 1" in report
    assert "NaN in fn but not in the reference: 1 element(s), first at (2, 3)" in report
    assert "inf mismatch" in report
    assert mismatch_report("output", ref, ref.clone(), Rule(tolerance(torch.float32))) is None
    assert "shape (3, 4), reference (4, 3)" in mismatch_report(
        "o", ref, ref.t(), Rule(tolerance(torch.float32))
    )


def test_shape_dtype_and_in_place_problems_are_reported():
    inputs = CrossScanCase(1, 2, 3, 2).build()
    with pytest.raises(
        AssertionError, match=r"shape mismatch, fn \(1, 4, 2, 5\), reference \(1, 4, 2, 6\)"
    ):
        assert_matches_reference(lambda x: cross_scan(x)[..., :5], inputs, op="cross_scan")
    with pytest.raises(
        AssertionError, match="dtype mismatch, fn torch.float64, reference torch.float32"
    ):
        assert_matches_reference(lambda x: cross_scan(x).double(), inputs, op="cross_scan")

    def in_place(x):
        out = cross_scan(x.clone())
        x.mul_(2)
        return out

    with pytest.raises(AssertionError, match=r"modified its input\(s\) x in place"):
        assert_matches_reference(in_place, inputs, op="cross_scan")


def test_an_exception_in_fn_is_reported_with_its_cause():
    def crashes(x):
        raise IndexError("block index out of range")

    with pytest.raises(
        AssertionError, match="raised IndexError: block index out of range"
    ) as caught:
        assert_matches_reference(crashes, CrossScanCase(1, 1, 1, 1).build(), op="cross_scan")
    assert isinstance(caught.value.__cause__, IndexError)


def test_wrong_last_state_is_reported_on_its_own_output():
    def bad_last_state(*args, **kwargs):
        y, h = selective_scan(*args, **kwargs)
        return y, h * 1.01

    case = SelectiveScanCase(1, 4, 1, 6, 2, return_last_state=True, with_initial_state=True)
    with pytest.raises(AssertionError) as caught:
        assert_matches_reference(bad_last_state, case.build(), op="selective_scan")
    text = str(caught.value)
    assert "output[1]:" in text and "output[0]:" not in text
    assert "output(s) [0] match the reference, output(s) [1] do not" in text


def test_check_grad_true_requires_autograd():
    inputs = CrossMergeCase(1, 1, 2, 2).build()
    with pytest.raises(AssertionError, match="does not support autograd"):
        assert_matches_reference(
            lambda ys: cross_merge(ys.detach()), inputs, op="cross_merge", check_grad=True
        )
    assert assert_matches_reference(cross_merge, inputs, op="cross_merge", check_grad=True)


def test_low_precision_rule_allows_twice_the_references_own_error():
    case = SelectiveScanCase(2, 4, 2, 9, 2, dtype=torch.float16, init="zero", requires_grad=True)
    assert assert_matches_reference(
        selective_scan, case.build(), op="selective_scan", check_grad=True
    )

    def noisy(*args, **kwargs):
        return selective_scan(*args, **kwargs) + 0.05  # (b, k*d, l), 10x the float16 atol

    with pytest.raises(AssertionError, match="low-precision rule: max error <= 2 \\*"):
        assert_matches_reference(noisy, case.build(), op="selective_scan")


def test_noncontiguous_layout_is_kept_for_fn():
    inputs = SS2DCoreCase(1, 2, 3, 4, 2, noncontiguous=("x", "B")).build()
    seen = {}

    def spy(**kwargs):
        seen.update({k: v.stride() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        return ss2d_core(**kwargs)

    assert_matches_reference(spy, inputs, op="ss2d_core")
    assert seen["x"] == inputs["x"].stride() and seen["B"] == inputs["B"].stride()
    copy = copy_layout(inputs["B"])
    assert copy.stride() == inputs["B"].stride() and torch.equal(copy, inputs["B"])


def test_custom_reference_callable():
    def double(x):
        return 2 * x

    inputs = CrossScanCase(1, 1, 2, 2).build()
    assert_matches_reference(lambda x: x + x, inputs, op=double)
    with pytest.raises(ValueError, match="pass `inputs`"):
        check_kernel(double, double)


# ---- make_test and the pytest plugin ------------------------------------------------------

test_reference_cross_merge_by_make_test = make_test(cross_merge, op="cross_merge", max_examples=5)


def test_make_test_builds_a_named_pytest_test(request):
    made = make_test(MUTANTS[0].kernel, op="cross_scan", settings=PROFILE)
    assert made.__name__ == "test_cross_scan_wrong_route_order_matches_cross_scan"
    with pytest.raises(KernelMismatchError, match="wrong route order"):
        made(request)


def test_plugin_fixture_applies_the_examples_option(check_cross_scan, vmamba_examples):
    report = check_cross_scan(cross_scan, max_examples=3, settings=PROFILE)
    assert report.examples == 3
    assert vmamba_examples is None or isinstance(vmamba_examples, int)
