"""Claims of vmamba_fast/pytorch: the plain-PyTorch backend equals the reference loop.

- cross-scan, per-route cross-scan and cross-merge equal the reference's index loops exactly;
- `linear_recurrence` (the odd-even parallel scan) solves h_t = a_t h_{t-1} + b_t at every length;
- the selective scan matches the loop, forward and every gradient, at VMamba's step sizes and at
  extreme ones (1e-9 to 80), where a scan that divided by exp of a cumulative sum would give NaN;
- the state carries across a split, and the SS2D core and the whole model match the reference;
- bad arguments fail with the reference's messages; the backend is registered as "torch".
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

import vmamba_fast
import vmamba_ref
from vmamba_fast.pytorch import (
    cross_merge,
    cross_scan,
    cross_scan_routes,
    linear_recurrence,
    selective_scan,
    ss2d_core,
)
from vmamba_ref.contract import BACKENDS, available_backends, get_ops, is_available
from vmamba_ref.testing import (
    check_cross_merge,
    check_cross_scan,
    check_selective_scan,
    check_ss2d_core,
)
from vmamba_ref.testing.tolerances import FLOAT64_REWRITE, tolerance

# Step-size regimes: delta is drawn around `center` with spread `spread` before softplus.
REGIMES = {
    "vmamba": (-4.6, 1.0),  # softplus(-4.6) ~ 0.01: inside the Mamba init's [1e-3, 0.1]
    "tiny": (-20.0, 1.0),  # dt ~ 2e-9: the state barely decays
    "huge": (30.0, 5.0),  # dt ~ 30: exp(dt A) underflows, the state forgets every step
    "mixed": (0.0, 25.0),  # both extremes in one sequence
}


def make_scan_inputs(b, k, d, l, n, regime, dtype, seed, softplus=True):
    """Inputs of the selective scan in float64 (rounded through `dtype`), A = -exp(N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    center, spread = REGIMES[regime]
    kd = k * d
    delta = center + spread * torch.randn(b, kd, l, generator=g, dtype=torch.float64)
    if not softplus:
        delta = F.softplus(delta)  # positive step sizes passed directly
    x = dict(
        u=torch.randn(b, kd, l, generator=g, dtype=torch.float64),
        delta=delta,
        A=-torch.exp(torch.randn(kd, n, generator=g, dtype=torch.float64)),
        B=torch.randn(b, k, n, l, generator=g, dtype=torch.float64),
        C=torch.randn(b, k, n, l, generator=g, dtype=torch.float64),
        D=torch.randn(kd, generator=g, dtype=torch.float64),
        delta_bias=0.1 * torch.randn(kd, generator=g, dtype=torch.float64),
        initial_state=torch.randn(b, kd, n, generator=g, dtype=torch.float64),
    )
    if not softplus:  # the scan steps by delta + delta_bias: keep it positive, as the kit's cases do
        x["delta_bias"] = x["delta_bias"].abs()
    return {name: t.to(dtype) for name, t in x.items()}


def run_with_grads(fn, inputs, weights, **flags):
    """y, last state and the gradients of <y, w_y> + <h, w_h> w.r.t. every input tensor."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    y, h = fn(**leaves, return_last_state=True, **flags)
    ((y * weights[0].to(y.dtype)).sum() + (h * weights[1].to(h.dtype)).sum()).backward()
    return y.detach(), h.detach(), {name: t.grad for name, t in leaves.items()}


def assert_close(actual, expected, dtype, grad=False, what=""):
    tol = tolerance(dtype, grad=grad, backend="torch")
    torch.testing.assert_close(
        actual.to(torch.float64), expected.to(torch.float64), rtol=tol.rtol, atol=tol.atol, msg=lambda m: f"{what}: {m}"
    )


# ---------------------------------------------------------------- cross-scan and cross-merge


@given(b=st.integers(1, 2), d=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 99))
def test_cross_scan_and_merge_equal_the_reference_exactly(b, d, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, h, w, generator=g)
    xk = torch.randn(b, 4, d, h, w, generator=g)
    assert torch.equal(cross_scan(x), vmamba_ref.cross_scan(x))
    assert torch.equal(cross_scan_routes(xk), vmamba_ref.cross_scan_routes(xk))
    tol = tolerance(torch.float32, backend="torch")  # the merge sums the four routes in its own order
    torch.testing.assert_close(cross_merge(xk), vmamba_ref.cross_merge(xk), rtol=tol.rtol, atol=tol.atol)


def test_cross_merge_is_the_adjoint_of_cross_scan():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(2, 4, 3, 5, 7, dtype=torch.float64)
    (cross_scan(x) * ys.flatten(3)).sum().backward()
    torch.testing.assert_close(x.grad, cross_merge(ys))
    torch.testing.assert_close(cross_merge(cross_scan(x).view(2, 4, 3, 5, 7)), 4 * x)


def test_cross_ops_pass_the_test_kit():
    check_cross_scan(cross_scan, max_examples=20)
    check_cross_merge(cross_merge, max_examples=20)


# ---------------------------------------------------------------- the parallel scan


def loop_recurrence(a, b):
    h, out = torch.zeros_like(b[..., 0]), []
    for t in range(a.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, -1)


@given(l=st.integers(1, 130), seed=st.integers(0, 99))
@example(l=1, seed=0)
@example(l=3136, seed=0)  # VMamba's stage-1 length at 224x224
def test_linear_recurrence_solves_the_recurrence_at_every_length(l, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, l, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, l, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        linear_recurrence(a.log(), b), loop_recurrence(a, b), rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol
    )


def test_linear_recurrence_stays_finite_when_decays_underflow():
    """a = 0 (an underflowed exp(dt A)) and a = 1 (dt -> 0) in one sequence: the loop's values."""
    a = torch.tensor([[1.0, 0.0, 1.0, 1e-30, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    h = linear_recurrence(a.log(), b)  # log 0 = -inf: exp(-inf) = 0 exactly
    assert torch.isfinite(h).all()
    assert torch.equal(h, torch.tensor([[1.0, 2.0, 5.0, 4.0, 5.0, 11.0, 18.0]]))


# ---------------------------------------------------------------- the selective scan


scan_cases = dict(
    b=st.integers(1, 2),
    k=st.sampled_from([1, 2, 4]),
    d=st.integers(1, 3),
    l=st.integers(1, 40) | st.sampled_from([7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65]),
    n=st.integers(1, 4),
    regime=st.sampled_from(sorted(REGIMES)),
    softplus=st.booleans(),
    seed=st.integers(0, 999),
)


@given(dtype=st.sampled_from([torch.float64, torch.float32]), **scan_cases)
@example(dtype=torch.float32, b=1, k=4, d=2, l=65, n=1, regime="huge", softplus=True, seed=0)
@example(dtype=torch.float32, b=1, k=4, d=2, l=65, n=1, regime="tiny", softplus=True, seed=0)
@example(dtype=torch.float32, b=1, k=4, d=2, l=64, n=16, regime="mixed", softplus=True, seed=1)
@example(dtype=torch.float32, b=1, k=2, d=2, l=26, n=4, regime="tiny", softplus=False, seed=103)
def test_selective_scan_matches_the_loop_forward_and_gradients(dtype, b, k, d, l, n, regime, softplus, seed):
    """float64 against the loop in float64; float32 against the loop in float64 on the same
    (rounded) inputs, within the tolerance table."""
    inputs = make_scan_inputs(b, k, d, l, n, regime, dtype, seed, softplus)
    reference_inputs = {name: t.to(torch.float64) for name, t in inputs.items()}
    g = torch.Generator().manual_seed(seed + 1)
    weights = (torch.randn(b, k * d, l, generator=g, dtype=torch.float64), torch.randn(b, k * d, n, generator=g, dtype=torch.float64))
    y, h, grads = run_with_grads(selective_scan, inputs, weights, delta_softplus=softplus)
    y_ref, h_ref, grads_ref = run_with_grads(vmamba_ref.selective_scan, reference_inputs, weights, delta_softplus=softplus)
    assert y.dtype == dtype and h.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    assert_close(y, y_ref, dtype, what="y")
    assert_close(h, h_ref, dtype, what="last state")
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert_close(grad, grads_ref[name], dtype, grad=True, what=f"gradient of {name}")


@pytest.mark.parametrize("delta", [-80.0, 80.0])
def test_extreme_step_sizes_give_the_loops_values_not_nan(delta):
    """dt = softplus(+-80): 80 (every decay underflows to 0) or 1.8e-35 (every decay is 1)."""
    x = make_scan_inputs(1, 4, 2, 50, 4, "vmamba", torch.float32, seed=3)
    x["delta"] = torch.full_like(x["delta"], delta)
    y = selective_scan(**x)
    assert torch.isfinite(y).all()
    assert_close(y, vmamba_ref.selective_scan(**{k: v.double() for k, v in x.items()}), torch.float32)


def test_low_precision_inputs_compute_and_return_float32():
    x = make_scan_inputs(1, 4, 2, 33, 1, "vmamba", torch.float32, seed=5)
    half = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    y = selective_scan(**half)
    assert y.dtype == torch.float32
    tol = tolerance(torch.float32, backend="torch")  # both sides compute in float32 from the same bfloat16 values
    torch.testing.assert_close(y, vmamba_ref.selective_scan(**half), rtol=tol.rtol, atol=tol.atol)


@given(l=st.integers(2, 40), cut=st.integers(1, 39), seed=st.integers(0, 99))
def test_a_scan_split_in_two_with_the_carried_state_equals_one_scan(l, cut, seed):
    cut = min(cut, l - 1)
    x = make_scan_inputs(2, 4, 2, l, 2, "mixed", torch.float64, seed)
    x.pop("initial_state")
    first = {k: (v[..., :cut] if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    second = {k: (v[..., cut:] if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    y1, h1 = selective_scan(**first, return_last_state=True)
    y2, h2 = selective_scan(**second, initial_state=h1, return_last_state=True)
    y, h = selective_scan(**x, return_last_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)
    torch.testing.assert_close(h2, h, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)


def test_selective_scan_passes_the_test_kit():
    """The kit's own strategies: its parameter regimes, non-contiguous inputs with NaN gaps."""
    check_selective_scan(selective_scan, max_examples=30)


# ---------------------------------------------------------------- SS2D core and the model


def test_ss2d_core_passes_the_test_kit():
    check_ss2d_core(ss2d_core, max_examples=15)


def test_the_model_gives_the_reference_logits_and_gradients():
    torch.manual_seed(0)
    reference = vmamba_ref.vmamba_mini(backend="ref")
    model = vmamba_ref.vmamba_mini(backend="torch")
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    logits, logits_ref = model(x), reference(x)
    assert_close(logits, logits_ref, torch.float32, what="logits")
    logits.square().sum().backward()
    logits_ref.square().sum().backward()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, p_ref.grad, torch.float32, grad=True, what=f"gradient of {name}")


# ---------------------------------------------------------------- errors and registration


@pytest.mark.parametrize(
    "change",
    [
        dict(u=torch.randn(1, 8, 5, 2)),
        dict(A=torch.randn(8, 3)),
        dict(C=torch.randn(1, 4, 2, 6)),
        dict(delta=torch.randn(1, 8, 5, dtype=torch.float64)),
        dict(D=torch.tensor([float("nan")] * 8)),
        dict(initial_state=torch.randn(1, 8, 1)),
    ],
    ids=["u-rank", "A-shape", "C-length", "delta-dtype", "D-nan", "state-shape"],
)
def test_bad_arguments_fail_with_the_references_message(change):
    x = make_scan_inputs(1, 4, 2, 5, 2, "vmamba", torch.float32, seed=0)
    x.update(change)
    with pytest.raises((ValueError, TypeError)) as expected:
        vmamba_ref.selective_scan(**x)
    with pytest.raises(expected.type) as found:
        selective_scan(**x)
    assert str(found.value) == str(expected.value)


def test_torch_is_a_registered_backend_that_needs_nothing_more():
    assert "torch" in BACKENDS and is_available("torch") and "torch" in available_backends()
    ops = get_ops("torch")
    module = importlib.import_module("vmamba_fast.pytorch")
    assert ops.name == "torch" and ops.selective_scan is module.selective_scan
    assert ops.ss2d_core is module.ss2d_core and ops.cross_merge is module.cross_merge
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(vmamba_fast.cross_scan(x, backend="torch"), vmamba_ref.cross_scan(x))


# ---------------------------------------------------------------- the state recurrence's gradients


@pytest.mark.parametrize("l", [1, 2, 5, 13])
@pytest.mark.parametrize("with_state", [False, True])
def test_state_recurrence_gradients_and_second_derivatives(l, with_state):
    """`scan_states` has its own backward (the adjoint recurrence, in the loop's products) and
    forward-mode rule: float64 gradcheck and gradgradcheck, with and without an initial state."""
    from vmamba_fast.pytorch.selective_scan import scan_states

    g = torch.Generator().manual_seed(l)
    log_decay = (-torch.rand(2, 3, l, generator=g, dtype=torch.float64)).requires_grad_()  # (2, 3, l)
    drive = torch.randn(2, 3, l, generator=g, dtype=torch.float64).requires_grad_()  # (2, 3, l)
    state = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_() if with_state else None
    inputs = (log_decay, drive, state)
    assert torch.autograd.gradcheck(scan_states, inputs, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(scan_states, inputs)
