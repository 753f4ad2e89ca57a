"""The test kit on kernels as they are: mamba_ssm's signature, forward-only kernels, a looser
tolerance, inputs cast to several dtypes, and the report of what was skipped."""

import pytest
import torch
from hypothesis import strategies as st

from vmamba_fast.compat import selective_scan_fn
from vmamba_ref import selective_scan
from vmamba_ref.testing import (
    Capabilities,
    KernelMismatchError,
    SelectiveScanCase,
    Tolerance,
    check_selective_scan,
    selective_scan_inputs,
    tolerance,
)
from vmamba_ref.testing.mismatch import Rule, mismatch_report

EXAMPLES = 6
FACTOR = 10  # how much looser (or tighter) than the table a per-call tolerance is


def mamba_style(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False):  # fmt: skip
    """mamba_ssm's signature and defaults, on the reference; no initial_state."""
    return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, None, return_last_state, z=z)


def positional_only(u, delta, A, B, C, /, D=None, delta_bias=None, delta_softplus=True):
    """A binding whose tensors cannot be passed by keyword, without the last state."""
    return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def test_mamba_signature_passes_and_reports_the_skipped_initial_state():
    report = check_selective_scan(mamba_style, max_examples=EXAMPLES)
    assert report.examples == EXAMPLES
    assert any("initial_state" in s for s in report.skipped)
    assert "not tested: initial state" in str(report)


def test_compat_selective_scan_fn_passes_unmodified():
    # No Capabilities: its detached last state is compared, and not backpropagated through.
    report = check_selective_scan(selective_scan_fn, max_examples=EXAMPLES, settings="ci")
    assert report.examples == EXAMPLES and report.gradient_examples == EXAMPLES
    assert any("through output[1]" in s for s in report.skipped)
    assert "not tested: gradients through output[1]: fn returns it without grad" in str(report)


def test_a_detached_last_state_is_not_backpropagated_through():
    def detached_last_state(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, return_last_state=False):  # fmt: skip
        out = mamba_style(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        return (out[0], out[1].detach()) if return_last_state else out

    inputs = selective_scan_inputs(
        return_last_state=True, with_initial_state=False, requires_grad=True, max_length=9
    )
    report = check_selective_scan(detached_last_state, inputs=inputs, max_examples=EXAMPLES)
    assert report.gradient_examples == EXAMPLES
    assert any("gradients through output[1]" in s for s in report.skipped)

    def wrong_and_detached(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False):  # fmt: skip
        y, last = detached_last_state(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
        return y, last * 1.01  # the forward value of a detached output is still compared

    with pytest.raises(KernelMismatchError, match=r"output\[1\]"):
        check_selective_scan(wrong_and_detached, inputs=inputs, max_examples=EXAMPLES)


def test_half_precision_outputs_pass_under_the_low_precision_rule():
    # mamba_ssm returns u's dtype where the reference returns its compute dtype, float32.
    low = (torch.float16, torch.bfloat16)
    report = check_selective_scan(selective_scan_fn, dtypes=low, max_examples=EXAMPLES)
    assert report.examples == report.gradient_examples == EXAMPLES
    assert any("float16, the inputs' dtype" in n for n in report.notes)
    assert "note: output" in str(report)

    def off_by_a_little(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                        delta_softplus=False, return_last_state=False):  # fmt: skip
        out = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                return_last_state)  # fmt: skip
        y = out[0] if isinstance(out, tuple) else out
        bumped = y + 4 * tolerance(y.dtype).atol  # beyond the rule's atol, in y's dtype
        return (bumped, out[1]) if isinstance(out, tuple) else bumped

    with pytest.raises(KernelMismatchError, match="low-precision rule"):
        check_selective_scan(off_by_a_little, dtypes=low, max_examples=EXAMPLES)


def test_determinism_is_checked_on_request():
    calls = []

    def jittery(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                initial_state=None, return_last_state=False):  # fmt: skip
        calls.append(None)
        out = selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state,
                             return_last_state)  # fmt: skip
        y = out[0] if return_last_state else out
        y = y + torch.finfo(y.dtype).eps * (len(calls) % 2) * y  # one ulp on every other call
        return (y, out[1]) if return_last_state else y

    check_selective_scan(jittery, max_examples=EXAMPLES, settings="ci")  # within tolerance
    with pytest.raises(KernelMismatchError, match="not deterministic"):
        check_selective_scan(jittery, max_examples=EXAMPLES, settings="ci", deterministic=True)


def test_positional_only_kernel_runs_and_skips_the_last_state():
    report = check_selective_scan(positional_only, max_examples=EXAMPLES)
    assert any("last state" in s for s in report.skipped)


def test_user_inputs_needing_a_missing_feature_are_skipped_not_failed():
    inputs = selective_scan_inputs(with_initial_state=True, max_length=9)
    report = check_selective_scan(mamba_style, inputs=inputs, max_examples=EXAMPLES)
    assert report.examples == 0 and report.skipped_examples == EXAMPLES
    assert any("initial state" in s for s in report.skipped)


def test_planted_bug_in_an_adapted_kernel_is_caught():
    def drops_D(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False):  # fmt: skip
        return mamba_style(u, delta, A, B, C, None, z, delta_bias, delta_softplus,
                           return_last_state)  # fmt: skip

    with pytest.raises(KernelMismatchError, match="does not match"):
        check_selective_scan(drops_D, inputs=selective_scan_inputs(with_D=True), max_examples=20)


def test_softplus_is_passed_explicitly():
    def ignores_softplus(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False):  # fmt: skip
        return mamba_style(u, delta, A, B, C, D, z, delta_bias, False, return_last_state)

    with pytest.raises(KernelMismatchError):
        check_selective_scan(
            ignores_softplus, inputs=selective_scan_inputs(delta_softplus=True), max_examples=20
        )


def test_forward_only_kernel_is_compared_on_outputs():
    def forward_only(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                     return_last_state=False):  # fmt: skip
        with torch.no_grad():
            return mamba_style(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                               return_last_state)  # fmt: skip

    caps = Capabilities(gradients=False)
    report = check_selective_scan(forward_only, capabilities=caps, max_examples=EXAMPLES)
    assert report.examples == EXAMPLES and report.gradient_examples == 0
    assert any("gradients" in s for s in report.skipped)
    with pytest.raises(ValueError, match="contradicts"):
        check_selective_scan(forward_only, capabilities=caps, check_grad=True)


def test_capabilities_bound_state_size_and_dtypes():
    caps = Capabilities(state_sizes=(2, 3), dtypes=(torch.float64,))
    report = check_selective_scan(mamba_style, capabilities=caps, max_examples=EXAMPLES)
    assert report.examples + report.skipped_examples == EXAMPLES


def test_looser_tolerance_warns_and_tighter_raises():
    table = tolerance(torch.float32)
    loose = Tolerance(table.rtol * FACTOR, table.atol * FACTOR)  # looser than the table
    with pytest.warns(UserWarning, match="tolerance loosened"):
        report = check_selective_scan(
            mamba_style, dtypes=[torch.float32], tolerance=loose, max_examples=3
        )
    assert any("tolerance loosened" in w for w in report.warnings)
    tight = Tolerance(table.rtol / FACTOR, table.atol / FACTOR)  # tighter than the table
    with pytest.raises(ValueError, match="tighter than the table"):
        check_selective_scan(mamba_style, dtypes=[torch.float32], tolerance=tight)


def test_inputs_and_dtypes_combine():
    seen = set()

    def recording(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True,
                  initial_state=None, return_last_state=False):  # fmt: skip
        seen.add(u.dtype)
        return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state,
                              return_last_state)  # fmt: skip

    case = SelectiveScanCase(batch=1, routes=4, channels=1, length=9, state=2)
    check_selective_scan(
        recording,
        inputs=st.just(case.build()),
        dtypes=[torch.float32, torch.float64],
        max_examples=10,
    )
    assert seen == {torch.float32, torch.float64}


def test_overflow_is_not_called_an_unwritten_element():
    from vmamba_ref.testing.diagnose import unwritten_or_overflow

    ref = torch.tensor([1.0, 3e39, float("inf")], dtype=torch.float64)
    fast = torch.tensor([1.0, float("inf"), float("nan")], dtype=torch.float32)
    text = " ".join(unwritten_or_overflow([fast], [ref], {}, nan_fill=True))
    assert "overflow" in text and "never written" not in text


def test_report_counts_nonfinite_mismatches_and_prints_float64_digits():
    ref = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    fast = ref.clone()
    fast[0] = 1.0 + 1e-9
    fast[2] = float("nan")
    report = mismatch_report("output", fast, ref, Rule(tolerance(torch.float64)))
    assert "1.000000001" in report
    assert "1 non-finite mismatch" in report


ALL_LAYOUTS = Capabilities(layouts=("grouped", "variable", "constant"))


def test_a_kernel_with_a_gate_is_tested_with_it_and_a_dropped_gate_is_caught():
    """`z` in the signature: the kit draws the gate (the reference applies y * silu(z))."""
    report = check_selective_scan(mamba_style, max_examples=EXAMPLES * 3)
    assert not any("gate" in s for s in report.skipped)

    def drops_the_gate(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):  # fmt: skip
        return mamba_style(u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state)

    # About half the drawn cases carry an initial state, which this signature skips, and half
    # of the rest a gate: 18 examples missed the dropped gate once in a fresh clone's run.
    with pytest.raises(KernelMismatchError):
        check_selective_scan(drops_the_gate, max_examples=EXAMPLES * 8)


def test_every_layout_of_B_and_C_when_stated_and_a_wrong_constant_B_is_caught():
    report = check_selective_scan(mamba_style, capabilities=ALL_LAYOUTS, max_examples=EXAMPLES * 4)
    assert report.examples > 0

    def first_channel_B(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False):  # fmt: skip
        if B.dim() == 2:  # bug: a constant B read as one row for every channel
            B = B[:1].expand_as(B)
        return mamba_style(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    with pytest.raises(KernelMismatchError):
        check_selective_scan(first_channel_B, capabilities=ALL_LAYOUTS, max_examples=EXAMPLES * 8)
    # Unstated, the kit draws VMamba's grouped layout only, and the bug goes unseen.
    check_selective_scan(first_channel_B, max_examples=EXAMPLES)


def test_the_cases_hold_each_layout_and_refuse_a_mixed_pair_of_group_counts():
    for layout, dims in (("grouped", 4), ("variable", 3), ("constant", 2)):
        case = SelectiveScanCase(batch=1, routes=1, channels=2, length=5, state=3, B_layout=layout,
                                 C_layout=layout, with_z=True)  # fmt: skip
        inputs = case.build()
        assert inputs["B"].dim() == inputs["C"].dim() == dims and inputs["z"].shape == (1, 2, 5)
    with pytest.raises(ValueError, match="routes must be 1"):
        SelectiveScanCase(batch=1, routes=4, channels=1, length=3, state=2, B_layout="variable")
    with pytest.raises(ValueError, match="Capabilities.layouts"):
        Capabilities(layouts=("dense",))
