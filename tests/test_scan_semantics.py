"""Claims of mamba_ssm's Mamba-1 scan semantics, on every backend (vmamba_ref/selective_scan.py,
the contract's `check_selective_scan_args`, `to_grouped_projections`, `gate` and `empty_scan`, and
each fast backend's public `selective_scan`):

- B and C each take any of mamba_ssm's layouts, constant (d, n), variable (b, n, l) or grouped
  (b, g, n, l), and the gate z gives out * silu(z): the reference equals an independent float64
  formulation on dense (b, d, n, l) projections;
- numba and torch equal the reference on those layouts, forward, last state and every gradient;
- an empty input (b = 0, d = 0 or l = 0) gives the same defined result on every backend: an empty
  y and the last state = the initial state (or zeros);
- a bad layout fails on every backend with an error that names the argument;
- Triton, under its interpreter in a subprocess: one small gated case against the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vmamba_fast
from vmamba_ref import selective_scan
from vmamba_ref.contract import is_available
from vmamba_ref.testing.tolerances import FLOAT64_REWRITE, Tolerance, tolerance

FAST_BACKENDS = [name for name in ("numba", "torch") if is_available(name)]
LAYOUTS = ("constant", "variable", "grouped")
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
ROOT = Path(__file__).resolve().parents[1]


def make_inputs(layout_B, layout_C, b=2, d=6, l=5, n=3, g=3, dtype=torch.float64, seed=0):
    """mamba_ssm's arguments: u, delta, z (b, d, l); A (d, n); B, C in their layouts (grouped
    with g groups); D, delta_bias (d,). Parameters (A, D, delta_bias, a constant B or C) are
    float64 for float64 inputs, float32 otherwise, as mamba_ssm keeps its weights."""
    gen = torch.Generator().manual_seed(seed)
    param = torch.float64 if dtype == torch.float64 else torch.float32

    def projection(layout):
        if layout == "constant":
            return torch.randn(d, n, generator=gen, dtype=torch.float64).to(param)
        shape = (b, n, l) if layout == "variable" else (b, g, n, l)
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    return dict(
        u=torch.randn(b, d, l, generator=gen, dtype=torch.float64).to(dtype),
        delta=torch.randn(b, d, l, generator=gen, dtype=torch.float64).to(dtype),
        A=-torch.rand(d, n, generator=gen, dtype=torch.float64).add(0.1).to(param),
        B=projection(layout_B),
        C=projection(layout_C),
        D=torch.randn(d, generator=gen, dtype=torch.float64).to(param),
        z=torch.randn(b, d, l, generator=gen, dtype=torch.float64).to(dtype),
        delta_bias=torch.randn(d, generator=gen, dtype=torch.float64).to(param),
    )


def dense(X, b, d, l):
    """B or C of any layout as one (b, d, n, l) float64 tensor, written from mamba_ssm's
    definitions rather than from the code under test."""
    X = X.to(torch.float64)
    if X.dim() == 2:  # constant (d, n): the same at every batch and step
        return X[None, :, :, None].expand(b, d, X.shape[1], l)
    if X.dim() == 3:  # variable (b, n, l): shared by every channel
        return X[:, None].expand(b, d, X.shape[1], l)
    g = X.shape[1]  # grouped (b, g, n, l): channel c reads group c // (d / g)
    return torch.stack([X[:, c // (d // g)] for c in range(d)], dim=1)


def mamba_formulation(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm's `selective_scan_ref` in float64 on dense projections: dt = softplus(delta +
    delta_bias); h_t = exp(dt A) h_{t-1} + dt B_t u_t; y_t = <C_t, h_t> + D u_t; out = y * silu(z).
    Returns (out, last state)."""
    u, delta, z = (t.to(torch.float64) for t in (u, delta, z))
    b, d, l = u.shape
    A, D, delta_bias = (t.to(torch.float64) for t in (A, D, delta_bias))
    Bd, Cd = dense(B, b, d, l), dense(C, b, d, l)  # (b, d, n, l)
    dt = F.softplus(delta + delta_bias[:, None])  # (b, d, l)
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(l):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bd[..., t]
        ys.append((h * Cd[..., t]).sum(-1) + D * u[:, :, t])
    y = torch.stack(ys, dim=-1)
    return y * z * torch.sigmoid(z), h


def assert_close(actual, expected, tol: Tolerance, what: str):
    torch.testing.assert_close(
        actual.to(torch.float64), expected.to(torch.float64), rtol=tol.rtol, atol=tol.atol,
        msg=lambda m: f"{what}: {m}",
    )  # fmt: skip


def run(fn, inputs, weights):
    """out, last state and the gradients of <out, w_y> + <h, w_h> w.r.t. every argument."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    y, h = fn(**leaves)
    loss = (y * weights[0].to(y.dtype)).sum() + (h * weights[1].to(h.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return y.detach(), h.detach(), dict(zip(leaves, grads, strict=True))


def scan_on(backend):
    """The backend's selective_scan in mamba_ssm's argument names, returning (out, last state)."""

    def fn(u, delta, A, B, C, D, z, delta_bias):
        if backend == "ref":
            return selective_scan(u, delta, A, B, C, D, delta_bias, True, None, True, z=z)
        return vmamba_fast.selective_scan(
            u, delta, A, B, C, D, delta_bias, True, None, True, z, backend=backend
        )

    return fn


shapes = dict(
    layout_B=st.sampled_from(LAYOUTS), layout_C=st.sampled_from(LAYOUTS), b=st.integers(1, 2),
    g=st.sampled_from([1, 2]), per_group=st.integers(1, 3), l=st.integers(1, 6),
    n=st.integers(1, 3), seed=st.integers(0, 999),
)  # fmt: skip


def draw(layout_B, layout_C, b, g, per_group, l, n, seed, dtype=torch.float64):
    return make_inputs(layout_B, layout_C, b, g * per_group, l, n, g, dtype, seed)


# ------------------------------------------------------------------------------------------------
# The reference against an independent formulation
# ------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(**shapes)
@example("constant", "grouped", 2, 2, 3, 5, 2, 0)
@example("variable", "constant", 1, 1, 2, 1, 1, 1)
def test_reference_equals_mamba_formulation(layout_B, layout_C, b, g, per_group, l, n, seed):
    x = draw(layout_B, layout_C, b, g, per_group, l, n, seed)
    if "constant" not in (layout_B, layout_C) and x["B"].dim() != x["C"].dim() and g != 1:
        return  # a variable B and C of different group counts: an error, tested below
    out, h = scan_on("ref")(**x)
    want, want_h = mamba_formulation(**x)
    assert_close(out, want, FLOAT64_REWRITE, "out")
    assert_close(h, want_h, FLOAT64_REWRITE, "last state")


def test_reference_gate_is_applied_after_the_loop():
    x = make_inputs("variable", "variable")
    z = x.pop("z")
    plain = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"])
    gated = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], z=z)
    assert torch.equal(gated, plain * F.silu(z))


def test_grouped_layout_keeps_vmamba_argument_order_and_result():
    """The old positional call (no z) on VMamba's layout gives the grouped formulation's y."""
    x = make_inputs("grouped", "grouped", g=3)
    y = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True)
    want, _ = mamba_formulation(**{**x, "z": torch.full_like(x["z"], 60.0)})  # silu(60) = 60
    assert_close(y * 60.0, want, FLOAT64_REWRITE, "y")


# ------------------------------------------------------------------------------------------------
# numba and torch against the reference: forward, last state and every gradient
# ------------------------------------------------------------------------------------------------


def check_backend(backend, x, dtype):
    gen = torch.Generator().manual_seed(7)
    b, d, l = x["u"].shape
    weights = (torch.randn(b, d, l, generator=gen), torch.randn(b, d, x["A"].shape[1], generator=gen))
    ref = run(scan_on("ref"), x, weights)
    fast = run(scan_on(backend), x, weights)
    tol, tol_grad = tolerance(dtype, backend=backend), tolerance(dtype, grad=True, backend=backend)
    assert fast[0].dtype == ref[0].dtype and fast[1].dtype == ref[1].dtype
    assert_close(fast[0], ref[0], tol, f"{backend} out")
    assert_close(fast[1], ref[1], tol, f"{backend} last state")
    for name in ARGS:
        got, want = fast[2][name], ref[2][name]
        assert got.shape == x[name].shape and got.dtype == x[name].dtype, name
        assert_close(got, want, tol_grad, f"{backend} d{name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=8, deadline=None)
@given(**shapes)
@example("constant", "constant", 1, 1, 2, 3, 2, 0)
@example("grouped", "constant", 2, 2, 2, 4, 3, 1)
def test_fast_backends_equal_the_reference(backend, layout_B, layout_C, b, g, per_group, l, n, seed):
    x = draw(layout_B, layout_C, b, g, per_group, l, n, seed)
    if "constant" not in (layout_B, layout_C) and x["B"].dim() != x["C"].dim() and g != 1:
        return
    check_backend(backend, x, torch.float64)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float32_with_half_inputs_and_a_float32_constant_B(backend):
    """mamba_ssm keeps a constant B in float32 beside float16 activations: computed in float32."""
    x = make_inputs("constant", "variable", dtype=torch.float32)
    check_backend(backend, x, torch.float32)
    half = make_inputs("constant", "variable", dtype=torch.float16)
    out = scan_on(backend)(**half)[0]
    assert out.dtype == torch.float32
    assert_close(out, scan_on("ref")(**half)[0], tolerance(torch.float32, backend=backend), "out")


# ------------------------------------------------------------------------------------------------
# Empty inputs: one defined result everywhere
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
@pytest.mark.parametrize(("b", "d", "l"), [(2, 4, 0), (0, 4, 5), (2, 0, 5), (0, 4, 0)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_state", [False, True])
def test_empty_inputs_give_an_empty_output_and_the_initial_state(backend, b, d, l, layout, with_state):
    n, g = 3, (2 if d else 1)
    x = make_inputs(layout, layout, b=b, d=d, l=l, n=n, g=g)
    x["B"] = x["B"] if layout != "grouped" else torch.randn(b, g, n, l, dtype=torch.float64)
    state = torch.randn(b, d, n, dtype=torch.float64, requires_grad=True) if with_state else None
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True, state, True)
    if backend == "ref":
        y, h = selective_scan(*args, z=x["z"])
    else:
        y, h = vmamba_fast.selective_scan(*args, x["z"], backend=backend)
    assert y.shape == (b, d, l) and y.dtype == torch.float64
    assert h.shape == (b, d, n) and h.dtype == torch.float64
    if state is None:
        assert torch.equal(h, torch.zeros(b, d, n, dtype=torch.float64))
        return
    if l == 0:
        assert torch.equal(h, state.detach())
        (grad,) = torch.autograd.grad(h.sum(), state)
        assert torch.equal(grad, torch.ones_like(state))
    assert h.data_ptr() != state.data_ptr() or h.numel() == 0


# ------------------------------------------------------------------------------------------------
# Bad layouts: errors that name the argument, the same on every backend
# ------------------------------------------------------------------------------------------------

BAD = [
    (dict(B=torch.zeros(2, 1, 3, 3, 5, dtype=torch.float64)), ValueError, r"`B` must have shape .*constant.*variable.*grouped"),
    (dict(C=torch.zeros(6, 4, dtype=torch.float64)), ValueError, r"`C` must have shape \(k\*d=6, n=3\)"),
    (dict(C=torch.zeros(2, 3, 4, dtype=torch.float64)), ValueError, r"`C` must have shape \(b=2, n=3, l=5\)"),
    (dict(B=torch.zeros(2, 4, 3, 5, dtype=torch.float64)), ValueError, r"group count g=4 \(dim 1 of `B`.* must divide"),
    (dict(B=torch.zeros(2, 3, 5, dtype=torch.float64)), ValueError, r"`B` has 1 group\(s\) and `C` 3"),
    (dict(C=torch.zeros(2, 3, 3, 5, dtype=torch.float32)), TypeError, "`C` must have the same dtype as `u`"),
    (dict(A=torch.zeros(6, 3, dtype=torch.complex64)), TypeError, "`A` is complex"),
    (dict(z=torch.zeros(2, 6, 4, dtype=torch.float64)), ValueError, r"`z` must have shape \(b=2, k\*d=6, l=5\)"),
    (dict(z=torch.zeros(2, 6, 5, dtype=torch.int32)), TypeError, "`z` must have dtype in"),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
@pytest.mark.parametrize(("change", "error", "message"), BAD)
def test_bad_layouts_name_the_argument(backend, change, error, message):
    x = {**make_inputs("grouped", "grouped", b=2, d=6, l=5, n=3, g=3), **change}
    with pytest.raises(error, match=message):
        scan_on(backend)(**x)


# ------------------------------------------------------------------------------------------------
# Triton, interpreted in a fresh process (TRITON_INTERPRET=1 must precede importing triton)
# ------------------------------------------------------------------------------------------------

TRITON_CASE = """
import torch, vmamba_fast
from vmamba_ref import selective_scan
from vmamba_ref.testing.tolerances import tolerance
g = torch.Generator().manual_seed(0)
b, d, l, n = 1, 4, 3, 2
u, delta, z = (torch.randn(b, d, l, generator=g) for _ in range(3))
A = -torch.rand(d, n, generator=g) - 0.1
B, C = torch.randn(d, n, generator=g), torch.randn(b, n, l, generator=g)
tol = tolerance(torch.float32, backend="triton")
want = selective_scan(u, delta, A, B, C, z=z, return_last_state=True)
got = vmamba_fast.selective_scan(u, delta, A, B, C, None, None, True, None, True, z, backend="triton")
for a, e in zip(got, want):
    torch.testing.assert_close(a, e, rtol=tol.rtol, atol=tol.atol)
y, h = vmamba_fast.selective_scan(u[..., :0], delta[..., :0], A, B, C[..., :0], None, None, True, None, True, z[..., :0], backend="triton")
assert y.shape == (b, d, 0) and torch.equal(h, torch.zeros(b, d, n))
print("triton ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(not is_available("triton"), reason="triton is not installed")
def test_triton_interpreted_constant_B_variable_C_gate_and_empty_input():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", TRITON_CASE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and "triton ok" in result.stdout, result.stdout + result.stderr[-5000:]
