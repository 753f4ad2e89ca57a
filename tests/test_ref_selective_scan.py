"""Claims of vmamba_ref/selective_scan.py: the recurrence, its closed form, state carrying,
the dtype rule and the argument checks."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vmamba_ref import selective_scan
from vmamba_ref.testing.tolerances import FLOAT64_REWRITE


def make_inputs(b=2, k=4, d=3, l=7, n=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    kd = k * d
    return dict(
        u=torch.randn(b, kd, l, generator=g).to(dtype),
        delta=torch.randn(b, kd, l, generator=g).to(dtype),
        A=-torch.rand(kd, n, generator=g, dtype=torch.float64).add(0.1).to(torch.float32 if dtype != torch.float64 else dtype),
        B=torch.randn(b, k, n, l, generator=g).to(dtype),
        C=torch.randn(b, k, n, l, generator=g).to(dtype),
        D=torch.randn(kd, generator=g).to(torch.float32 if dtype != torch.float64 else dtype),
        delta_bias=torch.randn(kd, generator=g).to(torch.float32 if dtype != torch.float64 else dtype),
    )


def textbook_scan(u, delta, A, B, C, D, delta_bias):
    """Mamba's reference formulation, written independently: discretize everything up front,
    then a loop over time on the materialized (b, k*d, l, n) tensors."""
    b, kd, l = u.shape
    k = B.shape[1]
    dt = F.softplus(delta + delta_bias[:, None])  # (b, kd, l)
    Bx = B.repeat_interleave(kd // k, dim=1)  # (b, kd, n, l)
    Cx = C.repeat_interleave(kd // k, dim=1)  # (b, kd, n, l)
    dA = torch.exp(dt[..., None] * A[:, None, :])  # (b, kd, l, n)
    dBu = dt[..., None] * Bx.transpose(2, 3) * u[..., None]  # (b, kd, l, n)
    h = torch.zeros(b, kd, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(l):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * Cx[..., t]).sum(-1))
    return torch.stack(ys, -1) + D[:, None] * u


@given(
    b=st.integers(1, 2), k=st.sampled_from([1, 2, 4]), d=st.integers(1, 3),
    l=st.integers(1, 12), n=st.integers(1, 4), seed=st.integers(0, 1000),
)
def test_matches_the_textbook_formulation(b, k, d, l, n, seed):
    x = make_inputs(b, k, d, l, n, seed=seed)
    torch.testing.assert_close(selective_scan(**x), textbook_scan(**x), rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)


def test_zero_input_gives_zero_output():
    x = make_inputs()
    x["u"] = torch.zeros_like(x["u"])
    assert torch.equal(selective_scan(**x), torch.zeros_like(x["u"]))


@given(l=st.integers(2, 16), cut=st.integers(1, 15), seed=st.integers(0, 1000))
def test_a_scan_split_in_two_with_the_carried_state_equals_one_scan(l, cut, seed):
    cut = min(cut, l - 1)
    x = make_inputs(l=l, seed=seed)
    first = {k: (v[..., :cut] if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    second = {k: (v[..., cut:] if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    y1, h1 = selective_scan(**first, return_last_state=True)
    y2, h2 = selective_scan(**second, initial_state=h1, return_last_state=True)
    y, h = selective_scan(**x, return_last_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)
    torch.testing.assert_close(h2, h, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)


def test_constant_step_size_matches_the_closed_form():
    """With constant dt, u = B = 1 and n = 1: h_t = dt (1 - a^(t+1)) / (1 - a), a = exp(dt A)."""
    l, dt, A = 50, 0.3, -0.7
    inv_softplus = torch.log(torch.expm1(torch.tensor(dt, dtype=torch.float64)))
    ones = torch.ones(1, 4, l, dtype=torch.float64)
    y = selective_scan(
        u=ones, delta=ones * inv_softplus, A=torch.full((4, 1), A, dtype=torch.float64),
        B=torch.ones(1, 4, 1, l, dtype=torch.float64), C=torch.ones(1, 4, 1, l, dtype=torch.float64),
    )
    a = torch.exp(torch.tensor(dt * A, dtype=torch.float64))
    t = torch.arange(l, dtype=torch.float64)
    expected = dt * (1 - a ** (t + 1)) / (1 - a)
    torch.testing.assert_close(y[0, 0], expected, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)


def test_gradients_pass_gradcheck():
    x = make_inputs(b=1, k=2, d=1, l=4, n=2)
    for t in x.values():
        t.requires_grad_(True)
    torch.autograd.gradcheck(lambda *a: selective_scan(*a), tuple(x.values()))


@pytest.mark.parametrize(
    ("dtype", "out"),
    [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
     (torch.float32, torch.float32), (torch.float64, torch.float64)],
)
def test_output_dtype_rule(dtype, out):
    assert selective_scan(**make_inputs(dtype=dtype)).dtype == out


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(u=torch.zeros(2, 12)), ValueError, r"`u` must have shape \(b, k\*d, l\)"),
        (dict(delta=torch.zeros(2, 12, 6, dtype=torch.float64)), ValueError, r"`delta` must have shape \(b=2, k\*d=12, l=7\)"),
        (dict(B=torch.zeros(2, 5, 2, 7, dtype=torch.float64)), ValueError, "route count k=5"),
        (dict(C=torch.zeros(2, 4, 3, 7, dtype=torch.float64)), ValueError, r"`C` must have shape \(b=2, k=4, n=2, l=7\)"),
        (dict(A=torch.zeros(12, 3)), ValueError, r"`A` must have shape \(k\*d=12, n=2\)"),
        (dict(D=torch.zeros(11)), ValueError, r"`D` must have shape \(k\*d=12\)"),
        (dict(delta=torch.zeros(2, 12, 7, dtype=torch.float32)), TypeError, "`delta` must have the same dtype as `u`"),
        (dict(u=torch.zeros(2, 12, 7, dtype=torch.int32)), TypeError, "`u` must have dtype in"),
        (dict(A=torch.full((12, 2), float("nan"))), ValueError, "`A` must be finite"),
        (dict(delta_bias=torch.full((12,), float("inf"))), ValueError, "`delta_bias` must be finite"),
        (dict(u=[[1.0]]), TypeError, "`u` must be a torch.Tensor"),
    ],
)
def test_bad_arguments_are_named(change, error, message):
    x = make_inputs()
    x.update(change)
    with pytest.raises(error, match=message):
        selective_scan(**x)


def test_nan_in_the_input_propagates_forward_in_time_only():
    x = make_inputs(l=9)
    x["u"][0, 0, 4] = float("nan")
    y = selective_scan(**x)
    assert torch.isfinite(y[0, 0, :4]).all() and torch.isnan(y[0, 0, 4:]).all()
    assert torch.isfinite(y[0, 1:]).all() and torch.isfinite(y[1]).all()
