"""The Numba selective scan equals the reference loop: output, last state and every gradient.

- property tests over the kit's strategies (batch 1-3, k*d up to 40 channels in 1, 2 or 4
  routes, length 1-40, state 1-16, VMamba's three inits and the extreme step-size regimes,
  optional arguments, non-contiguous inputs), float64 and float32 to the tolerance table,
  float16/bfloat16 by the low-precision rule; tiles of 1-8 steps put tile boundaries inside
  these short sequences;
- the arithmetic helpers (exp, log1p, softplus, sigmoid) at extreme inputs, and the scan at
  delta = +-100, +-1e4 and with NaN injected at the start, middle and end;
- algebraic facts that hold bit for bit: zero input gives zero output, a scan split in two with
  the carried state equals one scan, and the tile size changes nothing;
- validation: every bad argument raises the reference's exact error, CUDA (here: meta) tensors
  say which backend to use, and degenerate sizes do not crash.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

from vmamba_fast.numba import selective_scan
from vmamba_fast.numba.config import override
from vmamba_fast.numba.memory import stream_row
from vmamba_fast.numba.numerics import exp_, exp_nonpositive_, log1p_, sigmoid_, softplus_
from vmamba_ref.contract import BackendUnavailableError
from vmamba_ref.selective_scan import selective_scan as ref_selective_scan
from vmamba_ref.testing.cases import SelectiveScanCase
from vmamba_ref.testing.compare import assert_matches_reference
from vmamba_ref.testing.strategies import selective_scan_inputs
from vmamba_ref.testing.tolerances import tolerance

TILES = (1, 3, 8, 512)  # time tiles: the small ones put boundaries inside short sequences
EXAMPLES = 30


def scan_strategy(dtypes, requires_grad=True):
    return selective_scan_inputs(
        dtypes=dtypes,
        max_batch=3,
        routes=(1, 2, 4),
        max_channels=10,  # per route: up to 40 scan channels
        max_length=40,
        max_state=16,
        requires_grad=requires_grad,
    )


@settings(max_examples=EXAMPLES)
@given(inputs=scan_strategy((torch.float32, torch.float64)), tile=st.sampled_from(TILES))
@example(
    inputs=SelectiveScanCase(
        batch=2, routes=4, channels=5, length=9, state=3, with_initial_state=True,
        return_last_state=True, requires_grad=True,
    ).build(),
    tile=3,
)  # fmt: skip
@example(
    inputs=SelectiveScanCase(
        batch=1, routes=2, channels=3, length=7, state=16, dtype=torch.float64, init="huge_step",
        with_D=False, with_delta_bias=False, requires_grad=True, noncontiguous=("u", "B"),
    ).build(),
    tile=1,
)  # fmt: skip
def test_matches_reference(inputs, tile):
    with override(time_tile=tile):
        assert_matches_reference(selective_scan, inputs, op="selective_scan", check_grad=True)


@settings(max_examples=20)
@given(inputs=scan_strategy((torch.float16, torch.bfloat16)), tile=st.sampled_from(TILES))
def test_low_precision_matches_reference(inputs, tile):
    """max|fast - ref64| <= 2 * max|ref_lowp - ref64| + atol, outputs and gradients."""
    with override(time_tile=tile):
        assert_matches_reference(selective_scan, inputs, op="selective_scan", check_grad=True)


# ------------------------------------------------------------------------------------------------
# Arithmetic helpers at extreme inputs
# ------------------------------------------------------------------------------------------------


@njit
def _apply_into(x, which, out):
    for i in range(x.shape[0]):
        if which == 0:
            out[i] = exp_(x[i])
        elif which == 1:
            out[i] = softplus_(x[i])
        elif which == 2:
            out[i] = sigmoid_(x[i])
        elif which == 4:
            out[i] = exp_nonpositive_(x[i])
        else:
            out[i] = log1p_(x[i])


def _apply(x, which):
    # The output comes from Python: the suite replaces numpy.empty by a NaN-filling wrapper
    # (tests/conftest.py), which a Numba allocation compiled during a test would trip on.
    out = np.zeros_like(x)
    _apply_into(x, which, out)
    return out


EXTREMES = [-1e4, -100.0, -88.8, -87.4, -87.3, -20.0, -1.0, -1e-30, 0.0, 1e-30, 1.0, 20.0, 88.7]
EXTREMES += [88.8, 100.0, 1e4, float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "which, reference",
    [(0, torch.exp), (1, F.softplus), (2, torch.sigmoid)],
    ids=["exp", "softplus", "sigmoid"],
)
def test_arithmetic_at_extremes(dtype, which, reference):
    """The vectorized float32 formulas agree with torch in float64 to float32 precision
    everywhere, overflow to inf where exp does, pass NaN through, and flush results below the
    smallest normal float32 (1.2e-38) to zero, as flush-to-zero arithmetic would."""
    grid = np.concatenate([np.array(EXTREMES), np.linspace(-90, 90, 2001)]).astype(dtype)
    got = torch.from_numpy(_apply(grid, which)).double()
    want = reference(torch.from_numpy(grid).double())
    if dtype == np.float32:
        want = want.float().double()  # exp of 88.7 is finite in float64, inf in float32
        flush = torch.finfo(torch.float32).tiny
    else:
        flush = 0.0
    tol = tolerance(torch.float32 if dtype == np.float32 else torch.float64, backend="numba")
    torch.testing.assert_close(got, want, rtol=tol.rtol, atol=flush, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_nonpositive_at_extremes(dtype):
    """exp_nonpositive_ on its domain, x <= 0 and NaN: the same contract as exp_ there (float32
    precision, zero below the smallest normal float32, NaN through)."""
    grid = np.array([x for x in EXTREMES if not x > 0] + list(np.linspace(-90, 0, 1001)), dtype)
    got = torch.from_numpy(_apply(grid, 4)).double()
    want = torch.exp(torch.from_numpy(grid).double())
    flush = torch.finfo(torch.float32).tiny if dtype == np.float32 else 0.0
    tol = tolerance(torch.float32 if dtype == np.float32 else torch.float64, backend="numba")
    torch.testing.assert_close(got, want, rtol=tol.rtol, atol=flush, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positive_and_zero_A_take_the_general_exp(dtype):
    """The kernel evaluates dA = exp(dt * A) with the cheaper exp_nonpositive_ only where
    softplus makes dt >= 0 and A <= 0. A channel with a positive (growing) or NaN A must take
    the general exp: forward and every gradient still match the reference."""
    inputs = SelectiveScanCase(
        batch=2, routes=2, channels=3, length=20, state=2, dtype=dtype, requires_grad=True,
        with_initial_state=True, return_last_state=True,
    ).build()  # fmt: skip
    A = inputs["A"].detach().clone()  # (k*d, n)
    A[0, 0], A[1, 1], A[2, 0], A[3, 1] = 0.5, 0.0, 2.0, -0.0
    inputs["A"] = A.requires_grad_()
    with override(time_tile=4):
        assert_matches_reference(selective_scan, inputs, op="selective_scan", check_grad=True)


def test_overflowing_dA_is_inf_like_the_reference():
    """dt * A = 200 at one step of a channel with A > 0: exp overflows to inf there, and the
    state with it, exactly where the reference's does (the cheaper exp has no overflow path,
    so taking it here would return a tiny number instead)."""
    inputs = SelectiveScanCase(
        batch=1, routes=2, channels=2, length=12, state=2, dtype=torch.float32
    ).build()
    A = inputs["A"].clone()  # (k*d, n)
    A[1] = 2.0
    delta = inputs["delta"].clone()  # (b, k*d, l)
    delta[0, 1, 5] = 100.0  # softplus(100 + bias) ~ 100
    inputs["A"], inputs["delta"] = A, delta
    y = selective_scan(**inputs)  # (b, k*d, l)
    want = ref_selective_scan(**inputs)  # the reference in float32 overflows at the same step
    assert not torch.isfinite(want[0, 1, 5:]).any()
    assert torch.equal(torch.isfinite(y), torch.isfinite(want))
    finite = torch.isfinite(want)
    tol = tolerance(torch.float32, backend="numba")
    torch.testing.assert_close(y[finite], want[finite], rtol=tol.rtol, atol=tol.atol)


@njit
def _stream_into(src, dst, start, stop):
    stream_row(src, dst[start:stop])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_row_writes_every_element_at_any_alignment(dtype):
    """The non-temporal copy splits a row into a head up to a cache-line boundary, whole lines
    and a tail: every start offset and length (0 to 3 lines) copies exactly, and touches
    nothing outside the row."""
    src = np.arange(1, 200, dtype=dtype)
    for start in range(17):
        for length in (0, 1, 7, 15, 16, 17, 31, 32, 33, 48, 100):
            dst = np.full(200, -1.0, dtype)
            _stream_into(src, dst, start, start + length)
            assert np.array_equal(dst[start : start + length], src[:length])
            assert (dst[:start] == -1).all() and (dst[start + length :] == -1).all()


def test_log1p_series_is_accurate_on_its_domain():
    """log1p_ is only called with e = exp(-|x|) in [0, 1]; there it is accurate to float32."""
    e = np.concatenate([[0.0, 1e-38, 1e-20, 1e-7], np.linspace(0, 1, 10001)]).astype(np.float32)
    got = torch.from_numpy(_apply(e, 3)).double()
    want = torch.log1p(torch.from_numpy(e).double())
    tol = tolerance(torch.float32, backend="numba").relative()
    torch.testing.assert_close(got, want, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [100.0, -100.0, 1e4, -1e4])
def test_extreme_step_sizes(dtype, value):
    """delta = +-100 and +-1e4 at scattered positions: softplus saturates or underflows, the
    state is forgotten or kept; forward and every gradient still match the reference."""
    inputs = SelectiveScanCase(
        batch=2, routes=2, channels=3, length=20, state=2, dtype=dtype, requires_grad=True,
        with_initial_state=True, return_last_state=True,
    ).build()  # fmt: skip
    delta = inputs["delta"].detach().clone()
    delta[:, :, ::3] = value
    delta[0, 1, :] = value
    inputs["delta"] = delta.requires_grad_()
    with override(time_tile=4):
        assert_matches_reference(selective_scan, inputs, op="selective_scan", check_grad=True)


@pytest.mark.parametrize("where", [0, 17, 39])
@pytest.mark.parametrize("name", ["u", "delta", "B", "C"])
def test_nan_propagates_like_the_reference(name, where):
    """A NaN at the start, middle or end of a sequence poisons exactly the outputs the
    reference poisons (nothing is clamped away by the vectorized arithmetic)."""
    inputs = SelectiveScanCase(
        batch=1, routes=2, channels=2, length=40, state=2, return_last_state=True
    ).build()
    t = inputs[name].clone()
    t[..., where] = float("nan")
    inputs[name] = t
    assert_matches_reference(selective_scan, inputs, op="selective_scan")


# ------------------------------------------------------------------------------------------------
# Algebraic facts of the recurrence, which the fast path keeps bit for bit
# ------------------------------------------------------------------------------------------------


def _scan_args(seed=0, b=2, k=4, d=6, l=50, n=3, dtype=torch.float32):
    case = SelectiveScanCase(
        batch=b, routes=k, channels=d, length=l, state=n, dtype=dtype, seed=seed,
        with_initial_state=True,
    )  # fmt: skip
    return case.build()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_input_gives_zero_output(dtype):
    args = _scan_args(dtype=dtype)
    args["u"] = torch.zeros_like(args["u"])
    args["initial_state"] = None
    assert torch.equal(selective_scan(**args), torch.zeros(args["u"].shape, dtype=dtype))


@pytest.mark.parametrize("split", [1, 17, 49])
def test_split_scan_with_carried_state_equals_one_scan(split):
    """scan(u[:s]) then scan(u[s:], initial_state=last state) == scan(u), exactly."""
    args = _scan_args()
    args["return_last_state"] = True
    y, last = selective_scan(**args)

    def part(sl, h0):
        seq = {k: args[k][..., sl] for k in ("u", "delta", "B", "C")}
        return selective_scan(**{**args, **seq, "initial_state": h0})

    y1, h1 = part(slice(0, split), args["initial_state"])
    y2, h2 = part(slice(split, None), h1)
    assert torch.equal(torch.cat([y1, y2], dim=-1), y)
    assert torch.equal(h2, last)


def test_tile_size_changes_nothing():
    """Tiles only decide where the carried state is handed over: results are identical."""
    args = _scan_args(l=37, n=5)
    args = {k: v.requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    results = []
    for tile in (1, 4, 37, 512):
        with override(time_tile=tile, chains=3):
            y = selective_scan(**args)
            grads = torch.autograd.grad(y.square().sum(), [args["u"], args["A"], args["B"]])
        results.append((y, *grads))
    tol = tolerance(torch.float32, backend="numba").relative()
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=tol.rtol, atol=tol.atol)


def test_no_state_sized_tensor_is_allocated(monkeypatch):
    """Forward and backward keep O(b*k*d*l) memory: with n = 16 (one channel per block) no
    tensor the backend allocates comes near the b*k*d*l*n elements of a (b, k*d, l, n) one."""
    args = _scan_args(b=2, k=4, d=32, l=256, n=16)
    args = {k: v.requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    state_sized = args["u"].numel() * 16
    seen = []
    for factory in ("empty", "zeros"):
        original = getattr(torch, factory)

        def spy(*size, original=original, **kwargs):
            out = original(*size, **kwargs)
            seen.append(out.numel())
            return out

        monkeypatch.setattr(torch, factory, spy)
    selective_scan(**args).sum().backward()
    assert seen and max(seen) <= state_sized // 4


# ------------------------------------------------------------------------------------------------
# Validation: the reference's errors, and no crash
# ------------------------------------------------------------------------------------------------


def _bad_inputs():
    good = _scan_args(b=1, k=2, d=2, l=5, n=2)
    yield "u 2-D", {**good, "u": good["u"][0]}
    yield "B length", {**good, "B": good["B"][..., :4]}
    yield "k does not divide", {**good, "B": good["B"].repeat(1, 3, 1, 1)[:, :3]}
    yield "delta dtype", {**good, "delta": good["delta"].double()}
    yield "A shape", {**good, "A": good["A"][:, :1]}
    yield "A not finite", {**good, "A": good["A"].clone().fill_(float("inf"))}
    yield "D shape", {**good, "D": good["D"][:1]}
    yield "delta_bias NaN", {**good, "delta_bias": good["delta_bias"] * float("nan")}
    yield "initial_state shape", {**good, "initial_state": good["initial_state"][:, :1]}
    yield "integer u", {**good, "u": good["u"].long()}
    yield "not a tensor", {**good, "C": good["C"].tolist()}


@pytest.mark.parametrize("name, args", list(_bad_inputs()), ids=[n for n, _ in _bad_inputs()])
def test_errors_are_the_reference_errors(name, args):
    with pytest.raises((TypeError, ValueError)) as ref_err:
        ref_selective_scan(**args)
    with pytest.raises(ref_err.type) as err:
        selective_scan(**args)
    assert str(err.value) == str(ref_err.value)


def test_tensors_off_the_cpu_name_the_backends_to_use():
    args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in _scan_args().items()}
    with pytest.raises(BackendUnavailableError, match="backend='triton'.*backend='ref'"):
        selective_scan(**args)


@pytest.mark.parametrize("b, l", [(0, 5), (2, 0)])
def test_empty_sizes_do_not_crash(b, l):
    args = _scan_args(b=max(b, 1), l=max(l, 1))
    for name in ("u", "delta", "B", "C"):
        args[name] = args[name][:b, ..., :l]
    args["initial_state"] = args["initial_state"][:b]
    y, last = selective_scan(**{**args, "return_last_state": True})
    assert y.shape == args["u"].shape
    assert torch.equal(last, args["initial_state"])
