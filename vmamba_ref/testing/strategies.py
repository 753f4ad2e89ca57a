"""Hypothesis strategies that draw valid inputs for the scan operators.

Each strategy draws a case from `cases.py` (sizes, dtype, parameter regime, optional arguments,
non-contiguous tensors, seed) and builds it, so every example is a `KernelInputs` dict of keyword
arguments for the reference function, and prints as the call that rebuilds it.

What the draws cover, and how they shrink:

- sizes from 1 up to the bound, plus the sizes that straddle power-of-two block boundaries
  (7/8/9, 15/16/17, 31/32/33, ...) that fit under it; height and width are drawn independently,
  so h != w and length 1 both occur. Sizes shrink towards 1.
- dtypes: the first of `dtypes` is where shrinking goes (float32 by default).
- parameter regimes: VMamba's three initializations and two extreme step sizes (`cases.INITS`).
- optional arguments present or absent (shrinking towards absent); each can be pinned with its
  keyword (`with_D=True`, `return_last_state=False`, ...).
- non-contiguous tensors whose storage gaps hold NaN (`contiguous=None`: any subset; True: none;
  False: every tensor with more than one element).
- values: bounded floats from a seeded generator; the seed shrinks towards 0.

For the selective scan, the route count k defaults to VMamba's 4; `routes=(1, 2, 4)` draws it,
and B, C then carry k groups shared by k*d / k channels each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from vmamba_ref.testing.cases import (
    FLOAT_DTYPES,
    INITS,
    PROJECTION_LAYOUTS,
    CrossMergeCase,
    CrossScanCase,
    KernelInputs,
    SelectiveScanCase,
    SS2DCoreCase,
)

BLOCK_BOUNDARIES = (7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129)
DEFAULT_DTYPES = (torch.float32, torch.float64)


def _check_bound(fn: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{fn}: `{name}` must be an int >= 1, got {value!r}")


def _check_dtypes(fn: str, dtypes: Sequence[torch.dtype]) -> tuple[torch.dtype, ...]:
    dtypes = tuple(dtypes)
    if not dtypes or any(d not in FLOAT_DTYPES for d in dtypes):
        raise ValueError(
            f"{fn}: `dtypes` must be a non-empty subset of {FLOAT_DTYPES}, got {dtypes}"
        )
    return dtypes


def _check_inits(fn: str, inits: Sequence[str]) -> tuple[str, ...]:
    inits = tuple(inits)
    if not inits or any(i not in INITS for i in inits):
        raise ValueError(f"{fn}: `inits` must be a non-empty subset of {INITS}, got {inits}")
    return inits


def sizes(upper: int) -> st.SearchStrategy[int]:
    """Sizes in [1, upper], with the block-boundary sizes under `upper` drawn often."""
    boundaries = [s for s in BLOCK_BOUNDARIES if s <= upper]
    anything = st.integers(1, upper)
    return anything | st.sampled_from(boundaries) if boundaries else anything


def _flag(draw: st.DrawFn, pinned: bool | None) -> bool:
    return draw(st.booleans()) if pinned is None else pinned


def _layout(draw: st.DrawFn, contiguous: bool | None, names: Sequence[str]) -> tuple[str, ...]:
    if contiguous is True:
        return ()
    if contiguous is False:
        return tuple(names)
    return tuple(name for name in names if draw(st.booleans()))


_seeds = st.integers(0, 2**32 - 1)


def cross_scan_inputs(
    *,
    dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES,
    max_batch: int = 2,
    max_channels: int = 4,
    max_side: int = 9,
    requires_grad: bool = False,
    contiguous: bool | None = None,
    device: str = "cpu",
) -> st.SearchStrategy[KernelInputs]:
    """Inputs `{"x": (b, d, h, w)}` for `cross_scan`, with b <= max_batch, d <= max_channels,
    h, w <= max_side."""
    for name, value in (
        ("max_batch", max_batch),
        ("max_channels", max_channels),
        ("max_side", max_side),
    ):
        _check_bound("cross_scan_inputs", name, value)
    dtypes = _check_dtypes("cross_scan_inputs", dtypes)

    @st.composite
    def draw_case(draw: st.DrawFn) -> CrossScanCase:
        return CrossScanCase(
            dtype=draw(st.sampled_from(dtypes)),
            batch=draw(st.integers(1, max_batch)),
            channels=draw(sizes(max_channels)),
            height=draw(sizes(max_side)),
            width=draw(sizes(max_side)),
            requires_grad=requires_grad,
            noncontiguous=_layout(draw, contiguous, ("x",)),
            seed=draw(_seeds),
            device=str(device),
        )

    return draw_case().map(lambda case: case.build())


def cross_merge_inputs(
    *,
    dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES,
    max_batch: int = 2,
    max_channels: int = 4,
    max_side: int = 9,
    requires_grad: bool = False,
    contiguous: bool | None = None,
    device: str = "cpu",
) -> st.SearchStrategy[KernelInputs]:
    """Inputs `{"ys": (b, 4, d, h, w)}` for `cross_merge`, with b <= max_batch,
    d <= max_channels, h, w <= max_side."""
    for name, value in (
        ("max_batch", max_batch),
        ("max_channels", max_channels),
        ("max_side", max_side),
    ):
        _check_bound("cross_merge_inputs", name, value)
    dtypes = _check_dtypes("cross_merge_inputs", dtypes)

    @st.composite
    def draw_case(draw: st.DrawFn) -> CrossMergeCase:
        return CrossMergeCase(
            dtype=draw(st.sampled_from(dtypes)),
            batch=draw(st.integers(1, max_batch)),
            channels=draw(sizes(max_channels)),
            height=draw(sizes(max_side)),
            width=draw(sizes(max_side)),
            requires_grad=requires_grad,
            noncontiguous=_layout(draw, contiguous, ("ys",)),
            seed=draw(_seeds),
            device=str(device),
        )

    return draw_case().map(lambda case: case.build())


def _projection_layouts(draw: st.DrawFn, layouts: tuple[str, ...], groups: int) -> dict[str, str]:
    """B's and C's layouts: drawn when there is a choice. A variable B or C has one group, so
    beside a grouped one of more groups it takes that one's layout (as mamba_ssm requires)."""
    if len(layouts) == 1:
        return {"B_layout": layouts[0], "C_layout": layouts[0]}
    B_layout, C_layout = draw(st.sampled_from(layouts)), draw(st.sampled_from(layouts))
    if groups > 1 and {B_layout, C_layout} == {"grouped", "variable"}:
        B_layout = C_layout = "grouped"
    return {"B_layout": B_layout, "C_layout": C_layout}


def selective_scan_inputs(
    *,
    dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES,
    max_batch: int = 2,
    routes: Sequence[int] = (4,),
    max_channels: int = 3,
    max_length: int = 33,
    max_state: int = 4,
    inits: Sequence[str] = INITS,
    with_D: bool | None = None,
    with_delta_bias: bool | None = None,
    delta_softplus: bool | None = None,
    with_initial_state: bool | None = None,
    return_last_state: bool | None = None,
    requires_grad: bool = False,
    contiguous: bool | None = None,
    device: str = "cpu",
    layouts: Sequence[str] = ("grouped",),
    with_z: bool | None = False,
) -> st.SearchStrategy[KernelInputs]:
    """Keyword arguments for `selective_scan`: u, delta (b, k*d, l), A (k*d, n), B, C (b, k, n, l),
    D, delta_bias (k*d,) or None, initial_state (b, k*d, n) or None, delta_softplus,
    return_last_state; with `layouts` beyond "grouped", B and C each in a layout drawn from them
    ("variable" (b, n, l), "constant" (k*d, n)); with `with_z` (None: drawn) the gate z
    (b, k*d, l).

    b <= max_batch, k drawn from `routes`, d <= max_channels (channels per route),
    l <= max_length, n <= max_state. The `with_*`, `delta_softplus` and `return_last_state`
    flags pin an option (None: draw it). `requires_grad` marks every floating tensor.
    """
    fn = "selective_scan_inputs"
    for name, value in (
        ("max_batch", max_batch),
        ("max_channels", max_channels),
        ("max_length", max_length),
        ("max_state", max_state),
    ):
        _check_bound(fn, name, value)
    routes = tuple(routes)
    if not routes:
        raise ValueError(f"{fn}: `routes` must name at least one route count")
    for k in routes:
        _check_bound(fn, "routes", k)
    dtypes = _check_dtypes(fn, dtypes)
    inits = _check_inits(fn, inits)
    layouts = tuple(layouts)
    if not layouts or any(layout not in PROJECTION_LAYOUTS for layout in layouts):
        raise ValueError(f"{fn}: `layouts` must name some of {list(PROJECTION_LAYOUTS)}, got {layouts!r}")
    tensors = ("u", "delta", "A", "B", "C", "D", "delta_bias", "initial_state")

    @st.composite
    def draw_case(draw: st.DrawFn) -> SelectiveScanCase:
        dtype = draw(st.sampled_from(dtypes))
        batch = draw(st.integers(1, max_batch))
        k = draw(st.sampled_from(routes))
        channels = draw(sizes(max_channels))
        length = draw(sizes(max_length))
        state = draw(sizes(max_state))
        init = draw(st.sampled_from(inits))
        has_D = _flag(draw, with_D)
        has_bias = _flag(draw, with_delta_bias)
        softplus = _flag(draw, delta_softplus)
        has_h0 = _flag(draw, with_initial_state)
        last = _flag(draw, return_last_state)
        present = [
            t
            for t in tensors
            if (t != "D" or has_D)
            and (t != "delta_bias" or has_bias)
            and (t != "initial_state" or has_h0)
        ]
        return SelectiveScanCase(
            batch=batch,
            routes=k,
            channels=channels,
            length=length,
            state=state,
            dtype=dtype,
            init=init,
            with_D=has_D,
            with_delta_bias=has_bias,
            delta_softplus=softplus,
            with_initial_state=has_h0,
            return_last_state=last,
            requires_grad=requires_grad,
            noncontiguous=_layout(draw, contiguous, present),
            seed=draw(_seeds),
            device=str(device),
            # Drawn last, and only when there is a choice, so the default cases stay as they were.
            **_projection_layouts(draw, layouts, k),
            with_z=_flag(draw, with_z),
        )

    return draw_case().map(lambda case: case.build())


def ss2d_core_inputs(
    *,
    dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES,
    max_batch: int = 2,
    max_channels: int = 3,
    max_side: int = 9,
    max_state: int = 4,
    inits: Sequence[str] = INITS,
    with_D: bool | None = None,
    with_delta_bias: bool | None = None,
    delta_softplus: bool | None = None,
    requires_grad: bool = False,
    contiguous: bool | None = None,
    device: str = "cpu",
) -> st.SearchStrategy[KernelInputs]:
    """Keyword arguments for `ss2d_core`: x (b, d, h, w), delta (b, 4, d, h, w), A (4d, n),
    B, C (b, 4, n, h, w), D, delta_bias (4d,) or None, delta_softplus.

    b <= max_batch, d <= max_channels, h, w <= max_side, n <= max_state; flags as in
    `selective_scan_inputs`.
    """
    fn = "ss2d_core_inputs"
    for name, value in (
        ("max_batch", max_batch),
        ("max_channels", max_channels),
        ("max_side", max_side),
        ("max_state", max_state),
    ):
        _check_bound(fn, name, value)
    dtypes = _check_dtypes(fn, dtypes)
    inits = _check_inits(fn, inits)
    tensors = ("x", "delta", "A", "B", "C", "D", "delta_bias")

    @st.composite
    def draw_case(draw: st.DrawFn) -> SS2DCoreCase:
        dtype = draw(st.sampled_from(dtypes))
        batch = draw(st.integers(1, max_batch))
        channels = draw(sizes(max_channels))
        height = draw(sizes(max_side))
        width = draw(sizes(max_side))
        state = draw(sizes(max_state))
        init = draw(st.sampled_from(inits))
        has_D = _flag(draw, with_D)
        has_bias = _flag(draw, with_delta_bias)
        softplus = _flag(draw, delta_softplus)
        present = [t for t in tensors if (t != "D" or has_D) and (t != "delta_bias" or has_bias)]
        return SS2DCoreCase(
            batch=batch,
            channels=channels,
            height=height,
            width=width,
            state=state,
            dtype=dtype,
            init=init,
            with_D=has_D,
            with_delta_bias=has_bias,
            delta_softplus=softplus,
            requires_grad=requires_grad,
            noncontiguous=_layout(draw, contiguous, present),
            seed=draw(_seeds),
            device=str(device),
        )

    return draw_case().map(lambda case: case.build())


STRATEGIES = {
    "cross_scan": cross_scan_inputs,
    "cross_merge": cross_merge_inputs,
    "selective_scan": selective_scan_inputs,
    "ss2d_core": ss2d_core_inputs,
}
