"""The fused Numba SS2D core equals the reference's cross-scan + scan + cross-merge.

- property tests over the kit's strategies (batch 1-3, channels 1-40, h and w 1-12
  independently, state 1-16, VMamba's inits and extreme step sizes, optional arguments,
  non-contiguous inputs), float64/float32 to the tolerance table, float16/bfloat16 by the
  low-precision rule, with tiles small enough that runs and column bands split the grid;
- the fused kernel equals the Numba backend's three separate ops; zero input gives zero
  output; extreme step sizes; the column-major routes' prefetch changes no bit;
- validation: the reference's errors, tensors off the CPU name the backends to use.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmamba_fast.numba import cross_merge, cross_scan, selective_scan, ss2d_core
from vmamba_fast.numba.config import JIT, override
from vmamba_ref.contract import BackendUnavailableError
from vmamba_ref.cross_scan import cross_scan_routes
from vmamba_ref.ss2d_core import ss2d_core as ref_ss2d_core
from vmamba_ref.testing.cases import SS2DCoreCase
from vmamba_ref.testing.compare import assert_matches_reference
from vmamba_ref.testing.strategies import ss2d_core_inputs
from vmamba_ref.testing.tolerances import tolerance

core_module = sys.modules["vmamba_fast.numba.ss2d_core"]  # the package exports a function of that name

# Tiles of 1-5 positions: runs end inside rows, and bands of max(1, tile // h) columns split
# the column-major routes; 512 covers the whole of these small grids.
TILES = (1, 2, 5, 512)
BOUNDS = {"max_batch": 3, "max_channels": 40, "max_side": 12, "max_state": 16}


@settings(max_examples=30)
@given(
    inputs=ss2d_core_inputs(dtypes=(torch.float32, torch.float64), requires_grad=True, **BOUNDS),
    tile=st.sampled_from(TILES),
)
@example(
    inputs=SS2DCoreCase(
        batch=2, channels=17, height=3, width=7, state=2, requires_grad=True
    ).build(),
    tile=5,
)
@example(
    inputs=SS2DCoreCase(
        batch=1, channels=3, height=12, width=1, state=16, dtype=torch.float64, init="random",
        with_D=False, with_delta_bias=False, delta_softplus=False, requires_grad=True,
        noncontiguous=("x", "delta", "C"),
    ).build(),
    tile=1,
)  # fmt: skip
@example(
    inputs=SS2DCoreCase(
        batch=2, channels=1, height=2, width=7, state=7, dtype=torch.float64, init="huge_step",
        with_delta_bias=False, requires_grad=True,
    ).build(),
    tile=1,
)  # fmt: skip
# Found by Hypothesis: steps near 20 where softplus(x) = x exactly above 20 (torch's threshold,
# VMamba's kernels'), which the kernel once computed as x + e^-x: a 2e-9 difference in float64.
def test_matches_reference(inputs, tile):
    with override(time_tile=tile):
        assert_matches_reference(ss2d_core, inputs, op="ss2d_core", check_grad=True)


@settings(max_examples=15)
@given(
    inputs=ss2d_core_inputs(
        dtypes=(torch.float16, torch.bfloat16), requires_grad=True, max_channels=12, max_side=9
    ),
    tile=st.sampled_from(TILES),
)
def test_low_precision_matches_reference(inputs, tile):
    with override(time_tile=tile):
        assert_matches_reference(ss2d_core, inputs, op="ss2d_core", check_grad=True)


def _core_args(b=2, d=6, h=5, w=7, n=3, dtype=torch.float32, seed=0):
    return SS2DCoreCase(
        batch=b, channels=d, height=h, width=w, state=n, dtype=dtype, seed=seed
    ).build()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_the_three_separate_ops(dtype):
    """ss2d_core(x, ...) = cross_merge(selective_scan(cross_scan(x), routes of delta, B, C))."""
    args = _core_args(dtype=dtype, h=9, w=4)
    x, delta, B, C = (args[k] for k in ("x", "delta", "B", "C"))
    b, d, h, w = x.shape
    ys = selective_scan(
        cross_scan(x).reshape(b, 4 * d, h * w),  # (b, k*d, l)
        cross_scan_routes(delta).reshape(b, 4 * d, h * w),  # (b, k*d, l)
        args["A"],
        cross_scan_routes(B),  # (b, k, n, l)
        cross_scan_routes(C),  # (b, k, n, l)
        args["D"],
        args["delta_bias"],
        args["delta_softplus"],
    )
    separate = cross_merge(ys.reshape(b, 4, d, h, w))
    tol = tolerance(dtype, backend="numba")
    torch.testing.assert_close(ss2d_core(**args), separate, rtol=tol.rtol, atol=tol.atol)


def test_zero_input_gives_zero_output():
    args = _core_args()
    args["x"] = torch.zeros_like(args["x"])
    assert torch.equal(ss2d_core(**args), torch.zeros_like(args["x"]))


def test_tile_size_changes_nothing():
    args = _core_args(h=6, w=11, n=5)
    results = []
    for tile in (1, 4, 13, 512):
        with override(time_tile=tile, chains=3):
            results.append(ss2d_core(**args))
    for other in results[1:]:
        assert torch.equal(results[0], other)


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "h and w swapped": x.transpose(2, 3).contiguous().transpose(2, 3),
        "with gaps": torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)[..., ::2].copy_(x),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d, n, tile", [(19, 1, 512), (19, 1, 5), (17, 16, 512), (40, 3, 1)])
def test_the_maps_layout_changes_no_number(d, n, tile, dtype):
    """The forward kernel reads x and writes y in the layout x is stored in (`load_channels`):
    channel-first, channels_last (the network's CPU maps; y is then channels_last too, so that
    out_norm reads it in place, and so is dx, so that the SiLU's backward before the core reads
    it in place) or any other strides (copied contiguous first). The layout changes no number:
    y and every gradient are bitwise the channel-first ones. Items of one channel block and of
    several (n = 16), channel counts that leave a short last item."""
    args = SS2DCoreCase(
        batch=2, channels=d, height=6, width=7, state=n, dtype=dtype, requires_grad=True
    ).build()
    dy = torch.randn(args["x"].shape, dtype=dtype)
    with override(time_tile=tile):
        y = ss2d_core(**args)
        expected = (y, *torch.autograd.grad(y, (args["x"], args["delta"], args["A"]), dy))
        assert y.is_contiguous()
        for name, x in _layouts(args["x"].detach()).items():
            x.requires_grad_()
            y = ss2d_core(**{**args, "x": x})
            assert y.is_contiguous(memory_format=torch.channels_last) == (name == "channels_last"), name
            got = (y, *torch.autograd.grad(y, (x, args["delta"], args["A"]), dy))
            assert got[1].is_contiguous(memory_format=torch.channels_last) == (name == "channels_last"), name
            assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True)), name


@pytest.mark.parametrize("value", [100.0, -100.0, 1e4, -1e4])
def test_extreme_step_sizes(value):
    inputs = SS2DCoreCase(
        batch=1, channels=4, height=5, width=6, state=2, requires_grad=True
    ).build()
    delta = inputs["delta"].detach().clone()
    delta[:, :, :, ::2] = value
    inputs["delta"] = delta.requires_grad_()
    with override(time_tile=4):
        assert_matches_reference(ss2d_core, inputs, op="ss2d_core", check_grad=True)


def channels_innermost(t: torch.Tensor) -> torch.Tensor:
    """delta (b, k, d, h, w) with the same values, stored (b, k, h, w, d): the layout the network
    makes for inference on the CPU, which takes the forward through the channels-in-lanes
    kernel (`channels_last_steps`). A leaf again when t was one."""
    out = t.detach().permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # (b, k, d, h, w)
    return out.requires_grad_(t.requires_grad)


@settings(max_examples=30)
@given(
    inputs=ss2d_core_inputs(dtypes=(torch.float32, torch.float64), requires_grad=True, **BOUNDS),
)
@example(
    inputs=SS2DCoreCase(
        batch=2, channels=37, height=3, width=7, state=1, requires_grad=True
    ).build(),
)  # VMamba-T/S/B's case (n = 1, softplus, A <= 0, D): the one-pass step; 37 = 2 * 16 + 5 lanes
@example(
    inputs=SS2DCoreCase(
        batch=1, channels=3, height=12, width=1, state=16, dtype=torch.float64, init="random",
        with_D=False, with_delta_bias=False, delta_softplus=False, requires_grad=True,
        noncontiguous=("x", "C"),
    ).build(),
)  # fmt: skip
def test_channels_innermost_steps_match_reference(inputs):
    """With delta stored channels innermost, the forward and the backward run the
    channels-in-lanes kernels (`_ss2d_core_fwd_positions_kernel`,
    `_ss2d_core_bwd_positions_kernel`): the reference's y and gradients."""
    inputs["delta"] = channels_innermost(inputs["delta"])
    _, d, h, w = inputs["x"].shape
    assert core_module.channels_last_steps(inputs["delta"]) == (d > 1 and h * w > 1)  # else both layouts
    assert_matches_reference(ss2d_core, inputs, op="ss2d_core", check_grad=True)


@settings(max_examples=10)
@given(
    inputs=ss2d_core_inputs(
        dtypes=(torch.float16, torch.bfloat16), max_channels=20, max_side=9, max_state=4
    ),
)
def test_channels_innermost_steps_in_low_precision_match_reference(inputs):
    inputs["delta"] = channels_innermost(inputs["delta"])
    assert_matches_reference(ss2d_core, inputs, op="ss2d_core")


def test_channels_innermost_steps_take_the_positions_kernels(monkeypatch):
    calls = []
    for name in ("_fwd_positions", "_bwd_positions"):
        kernel = getattr(core_module, name)
        monkeypatch.setattr(
            core_module, name, lambda *a, name=name, kernel=kernel: calls.append(name) or kernel(*a)
        )
    args = SS2DCoreCase(batch=2, channels=20, height=5, width=7, state=3, requires_grad=True).build()
    ss2d_core(**args).sum().backward()
    assert calls == []
    delta = channels_innermost(args["delta"])
    ss2d_core(**{**args, "delta": delta}).sum().backward()
    assert calls == ["_fwd_positions", "_bwd_positions"]
    assert core_module.channels_last_steps(delta.grad) or delta.grad.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, init", [(1, "mamba"), (3, "mamba"), (1, "random")])
def test_position_chunks_change_no_bit(n, init, dtype):
    """The channels-in-lanes forward splits the channels among work items by the thread count
    (`position_chunk`); every channel's numbers come from the same operations in any chunk, in
    a full vector or in the loop's remainder, so y is bitwise the same for any split: 16, 32
    and 48 lanes and all 37 channels. n = 1 with Mamba's init (A < 0) takes the one-pass step, the
    others the general one."""
    args = SS2DCoreCase(batch=2, channels=37, height=5, width=6, state=n, dtype=dtype, init=init).build()
    args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    args["delta"] = channels_innermost(args["delta"])
    ordered = [args[k] for k in ("x", "delta", "A", "B", "C", "D", "delta_bias", "delta_softplus")]
    ys = [core_module._fwd_positions(*ordered, cw) for cw in (16, 32, 48, 37)]
    for y in ys[1:]:
        assert torch.equal(y, ys[0])
    tol = tolerance(dtype, backend="numba")
    torch.testing.assert_close(ys[0], ref_ss2d_core(**args), rtol=tol.rtol, atol=tol.atol)


def _one_route(name: str, fn, ahead: int, n: int = 1, d: int = 37, h: int = 6, w: int = 7) -> list[np.ndarray]:
    """What `fn`, the channels-in-lanes route function `name` (compiled in any way), writes on
    the column-major route 1 of an h x w grid for all d channels of one image, prefetching
    `ahead` steps on."""
    rng = np.random.default_rng(n)
    l = h * w
    xs, ds, dys = rng.standard_normal((3, l, d), dtype=np.float32)  # (l, d) each
    Bs, Cs = rng.standard_normal((2, n, l), dtype=np.float32)  # (n, l) each
    At = -rng.random((n, d), dtype=np.float32)  # (n, d), A <= 0
    Db, bb = rng.standard_normal((2, d), dtype=np.float32)  # (d,) each
    order = core_module.route_order(h, w)[1]  # (l,), column-major
    if name == "_position_route_1":
        ys, s = np.zeros((l, d), np.float32), np.empty(d, np.float32)
        fn(xs, ds, ys, Bs[0], Cs[0], At[0], Db, bb, s, 0, order, False, ahead)
        return [ys, s]
    if name == "_position_route":
        ys, st, dtb = np.zeros((l, d), np.float32), np.empty((n, d), np.float32), np.empty(d, np.float32)
        fn(xs, ds, ys, Bs, Cs, At, Db, bb, st, dtb, 0, order, False, True, True, True, ahead)
        return [ys, st]
    Hs, v = np.empty((l, n, d), np.float32), np.empty((n + 5, d), np.float32)
    acc = np.zeros((n + 2, d), np.float64)
    dxs, dds, dBs, dCs = np.zeros((l, d), np.float32), np.empty((l, d), np.float32), *np.empty((2, n, l), np.float32)
    fn(xs, ds, dys, Bs, Cs, At, Db, bb, order, False, True, True, True, 0, Hs, v, acc, dxs, dds, dBs, dCs, ahead)
    return [dxs, dds, dBs, dCs, acc]


@pytest.mark.parametrize("name", ["_position_route_1", "_position_route", "_position_route_bwd"])
def test_the_column_routes_prefetch_and_change_no_bit(name):
    """The channels-in-lanes kernels ask for a column-major route's rows `PREFETCH_STEPS` steps
    before they reach them (`prefetch_steps`): the compiled route carries LLVM's prefetch, and
    every output is bitwise the same for any distance, none, one step, the kernels' and one past
    the route's end."""
    fn = numba.njit(**{**JIT, "cache": False})(getattr(core_module, name).py_func)  # its IR readable
    assert core_module.prefetch_steps(1) == core_module.prefetch_steps(3) == core_module.PREFETCH_STEPS > 0
    assert core_module.prefetch_steps(0) == core_module.prefetch_steps(2) == 0
    n = 1 if name == "_position_route_1" else 3
    expected = _one_route(name, fn, 0, n=n)
    for ahead in (1, core_module.PREFETCH_STEPS, 6 * 7 + 1):
        for got, want in zip(_one_route(name, fn, ahead, n=n), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert "llvm.prefetch" in fn.inspect_llvm(fn.signatures[0])


@pytest.mark.parametrize("layout", ["channels_last", "channel-first"])
def test_channels_innermost_steps_keep_ys_layout(layout):
    """y is laid out as x (`ops.ss2d_core_output`) whichever kernel runs: the channels-in-lanes
    kernel writes a channels_last y in place and copies into a contiguous one."""
    args = _core_args(d=20)
    if layout == "channels_last":
        args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    y = ss2d_core(**{**args, "delta": channels_innermost(args["delta"])})
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    tol = tolerance(torch.float32, backend="numba")
    torch.testing.assert_close(y, ref_ss2d_core(**args), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("name", ["x", "delta", "B", "C"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_channels_innermost_steps_put_nan_and_inf_where_the_reference_does(name, value):
    """One NaN or infinity in the middle of an input reaches y exactly where the reference puts
    NaN, +inf and -inf, in the one-pass step (n = 1) and the general one (n = 2)."""
    for n in (1, 2):
        args = _core_args(d=20, n=n, dtype=torch.float64)
        poisoned = args[name].clone()
        poisoned[(0, 1) if name != "x" else (0,)][(..., 2, 3)] = value
        args[name] = poisoned
        got = ss2d_core(**{**args, "delta": channels_innermost(args["delta"])})
        expected = ref_ss2d_core(**args)
        for mask in (torch.isnan, torch.isposinf, torch.isneginf):
            assert torch.equal(mask(got), mask(expected)), (name, value, n, mask.__name__)
        finite = torch.isfinite(expected)
        tol = tolerance(torch.float64, backend="numba")
        torch.testing.assert_close(got[finite], expected[finite], rtol=tol.rtol, atol=tol.atol)


def _bad_inputs():
    good = _core_args(b=1, d=2, h=3, w=4, n=2)
    yield "x 3-D", {**good, "x": good["x"][0]}
    yield "delta routes", {**good, "delta": good["delta"][:, :2]}
    yield "B grid", {**good, "B": good["B"][..., :3]}
    yield "C state", {**good, "C": good["C"][:, :, :1]}
    yield "A shape", {**good, "A": good["A"][:4]}
    yield "A not finite", {**good, "A": good["A"] * float("nan")}
    yield "D not finite", {**good, "D": good["D"] + float("inf")}
    yield "delta_bias not finite", {**good, "delta_bias": good["delta_bias"] * float("nan")}
    yield "A and D not finite", {**good, "A": good["A"] * float("nan"), "D": good["D"] + float("inf")}
    yield "D shape and A not finite", {**good, "A": good["A"] * float("nan"), "D": good["D"][:3]}
    yield "D shape", {**good, "D": good["D"][:3]}
    yield "delta dtype", {**good, "delta": good["delta"].double()}
    yield (
        "empty grid",
        {
            **good,
            **{k: good[k][..., :0] for k in ("x", "delta", "B", "C")},
        },
    )


@pytest.mark.parametrize("seen", [False, True], ids=["new layout", "good layout seen before"])
@pytest.mark.parametrize("name, args", list(_bad_inputs()), ids=[n for n, _ in _bad_inputs()])
def test_errors_are_the_reference_errors(name, args, seen, monkeypatch):
    """Also after a call with the good arguments' layout, which the kernel then checks for the
    parameters' finiteness only (`_check`): the first error is the reference's either way."""
    monkeypatch.setattr(core_module, "_VALID_LAYOUTS", {})
    if seen:
        ss2d_core(**_core_args(b=1, d=2, h=3, w=4, n=2))
        assert len(core_module._VALID_LAYOUTS) == 1
    with pytest.raises((TypeError, ValueError)) as ref_err:
        ref_ss2d_core(**args)
    with pytest.raises(ref_err.type) as err:
        ss2d_core(**args)
    assert str(err.value) == str(ref_err.value)


def test_a_layout_is_remembered_only_once_it_passed(monkeypatch):
    monkeypatch.setattr(core_module, "_VALID_LAYOUTS", {})
    for _, args in _bad_inputs():
        with pytest.raises((TypeError, ValueError)):
            ss2d_core(**args)
    assert core_module._VALID_LAYOUTS == {}
    good = _core_args(b=1, d=2, h=3, w=4, n=2)
    ss2d_core(**good)
    ss2d_core(**{**good, "D": None})  # another layout: D absent
    assert sorted(sizes for sizes in core_module._VALID_LAYOUTS.values()) == [(1, 2, 3, 4, 2)] * 2


def test_tensors_off_the_cpu_name_the_backends_to_use():
    args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in _core_args().items()}
    with pytest.raises(BackendUnavailableError, match="backend='triton'.*backend='ref'"):
        ss2d_core(**args)
