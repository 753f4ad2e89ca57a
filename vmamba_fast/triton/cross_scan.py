"""Triton cross-scan and cross-merge: the four routes of SS2D as gathers, one kernel each.

Paper section 3.3 (SS2D), figure 2; the route orders are `vmamba_ref.cross_scan`'s:

| k | route                  | step t reads grid position p (row-major)                |
|---|------------------------|---------------------------------------------------------|
| 0 | row-major              | p = t                                                   |
| 1 | column-major           | t = j*h + i  ->  p = i*w + j, i.e. p = (t % h)*w + t // h |
| 2 | row-major, reversed    | route 0 at step l-1-t                                   |
| 3 | column-major, reversed | route 1 at step l-1-t                                   |

Memory traffic: cross-scan reads x once per route and writes the four copies, 8 * b*d*l
elements moved; cross-merge the same in reverse. `vmamba_fast.triton.ss2d_core` avoids both by
reading and writing in route order inside the scan kernel, with the `route_position` helper
of `common.py`; these two kernels serve callers that want the four sequences themselves.

Both kernels gather, so neither needs atomics: cross-scan reads x at `route_position(t)`,
cross-merge reads each route's sequence at `route_step(p)`, the inverse map, and sums the four
values in float32 (float64 for float64) before one rounding to the output dtype.

The route maps and the device check are shared with the scan kernels and live in `common.py`.

Official implementation: `CrossScanF` / `CrossMergeF` and their Triton kernels in VMamba's
`csm_triton.py`. Deviations: the official kernels copy with flips and transposes of tiles;
here each step's position is computed from the route index, which is the definition the tests
compare against, and merge is a gather rather than a read-modify-write.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vmamba_fast.triton.common import acc_dtype, check_device, route_position, route_step
from vmamba_ref.contract import ROUTES, check_grid, check_shape, check_tensor


@triton.jit
def _cross_scan_kernel(p_x, p_xs, d, l, h, w, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """xs[i_b, k, :, t] = x[i_b, :, route_position(t, k)] for the four routes k, every channel.

    Pointers (contiguous):
        p_x   x  (b, d, l)     strides (d*l, l, 1), the grid flattened row-major
        p_xs  xs (b, 4, d, l)  strides (4*d*l, d*l, l, 1), each route in its own order

    Grid (cdiv(l, BLOCK_T), cdiv(d, BLOCK_D), b): program (i_t, i_d, i_b) writes steps
    [i_t*BLOCK_T, +BLOCK_T) of channels [i_d*BLOCK_D, +BLOCK_D) of batch i_b, all four routes.
    """
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_dt = (o_d < d)[:, None] & (o_t < l)[None, :]
    r_x = i_b * d + o_d  # rows of x viewed as (b*d, l)
    for i_k in tl.static_range(4):
        o_p = route_position(o_t, i_k, h, w, l)  # (BLOCK_T,)
        b_x = tl.load(p_x + r_x[:, None] * l + o_p[None, :], mask=m_dt)  # (BLOCK_D, BLOCK_T)
        r_xs = (i_b * 4 + i_k) * d + o_d  # rows of xs viewed as (b*4*d, l)
        tl.store(p_xs + r_xs[:, None] * l + o_t[None, :], b_x, mask=m_dt)


@triton.jit
def _cross_merge_kernel(
    p_ys, p_y, d, l, h, w, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr
):
    """y[i_b, :, p] = sum over k of ys[i_b, k, :, route_step(p, k)], every channel.

    Pointers (contiguous):
        p_ys  ys (b, 4, d, l)  strides (4*d*l, d*l, l, 1), route k's output at its step t
        p_y   y  (b, d, l)     strides (d*l, l, 1), the grid flattened row-major

    Grid (cdiv(l, BLOCK_T), cdiv(d, BLOCK_D), b): program (i_t, i_d, i_b) writes grid positions
    [i_t*BLOCK_T, +BLOCK_T) of channels [i_d*BLOCK_D, +BLOCK_D) of batch i_b; the four
    terms are summed in ACC (float32, or float64 for float64 ys) and rounded once.
    """
    i_t, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_p = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_dt = (o_d < d)[:, None] & (o_p < l)[None, :]
    b_y = tl.zeros((BLOCK_D, BLOCK_T), dtype=ACC)
    for i_k in tl.static_range(4):
        o_s = route_step(o_p, i_k, h, w, l)  # (BLOCK_T,)
        r_ys = (i_b * 4 + i_k) * d + o_d  # rows of ys viewed as (b*4*d, l)
        b_y += tl.load(p_ys + r_ys[:, None] * l + o_s[None, :], mask=m_dt).to(ACC)
    tl.store(
        p_y + (i_b * d + o_d)[:, None] * l + o_p[None, :], b_y.to(p_y.dtype.element_ty), mask=m_dt
    )


# Tile of one program: channels x steps. Gathers have no reuse, so the tile only needs to be
# large enough to keep the memory system busy.
_BLOCK_D = 16
_BLOCK_T = 64


def cross_scan_fwd(x: torch.Tensor) -> torch.Tensor:
    """Launch the cross-scan kernel: x (b, d, h, w) -> xs (b, 4, d, l), x's dtype."""
    b, d, h, w = x.shape
    l = h * w
    x = x.contiguous()
    xs = x.new_empty(b, ROUTES, d, l)  # (b, k, d, l)
    # One program per (step block, channel block, batch); each writes all four routes.
    grid = (triton.cdiv(l, _BLOCK_T), triton.cdiv(d, _BLOCK_D), b)
    _cross_scan_kernel[grid](x, xs, d, l, h, w, BLOCK_D=_BLOCK_D, BLOCK_T=_BLOCK_T)
    return xs


def cross_merge_fwd(ys: torch.Tensor) -> torch.Tensor:
    """Launch the cross-merge kernel: ys (b, 4, d, h, w) -> y (b, d, h, w), ys's dtype."""
    b, _, d, h, w = ys.shape
    l = h * w
    ys = ys.contiguous()
    y = ys.new_empty(b, d, h, w)  # (b, d, h, w)
    # One program per (position block, channel block, batch); each sums the four routes.
    grid = (triton.cdiv(l, _BLOCK_T), triton.cdiv(d, _BLOCK_D), b)
    _cross_merge_kernel[grid](
        ys, y, d, l, h, w, BLOCK_D=_BLOCK_D, BLOCK_T=_BLOCK_T, ACC=acc_dtype(ys.dtype)
    )
    return y


class CrossScanFn(torch.autograd.Function):
    """Cross-scan with its adjoint, cross-merge, as the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.grid_hw = tuple(x.shape[2:])
        return cross_scan_fwd(x)  # (b, k, d, l)

    @staticmethod
    def backward(ctx, g_xs: torch.Tensor) -> torch.Tensor:
        b, k, d, _ = g_xs.shape
        h, w = ctx.grid_hw
        return cross_merge_fwd(g_xs.reshape(b, k, d, h, w))  # (b, k, d, l) -> (b, d, h, w)


class CrossMergeFn(torch.autograd.Function):
    """Cross-merge with its adjoint, cross-scan, as the backward."""

    @staticmethod
    def forward(ctx, ys: torch.Tensor) -> torch.Tensor:
        return cross_merge_fwd(ys)  # (b, d, h, w)

    @staticmethod
    def backward(ctx, g_y: torch.Tensor) -> torch.Tensor:
        b, d, h, w = g_y.shape
        return cross_scan_fwd(g_y).view(b, ROUTES, d, h, w)  # (b, k, d, l) -> (b, k, d, h, w)


def _check_ys(fn: str, ys: torch.Tensor) -> None:
    """The reference's checks of cross-merge's input, then the device's."""
    check_tensor(fn, "ys", ys)
    check_shape(fn, "ys", ys, (None, ROUTES, None, None, None), "b k d h w")
    check_device(fn, ys)


def cuda_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of the `vmamba::cross_scan` operator (vmamba_fast/ops.py)."""
    check_grid("vmamba::cross_scan", "x", x)
    check_device("vmamba::cross_scan", x)
    return cross_scan_fwd(x)  # (b, k, d, l)


def cuda_cross_merge(ys: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel of the `vmamba::cross_merge` operator (vmamba_fast/ops.py)."""
    _check_ys("vmamba::cross_merge", ys)
    return cross_merge_fwd(ys)  # (b, d, h, w)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """`vmamba_ref.cross_scan` on the GPU: x (b, d, h, w) -> xs (b, 4, d, h*w), x's dtype.

    Differentiable; its backward is the cross-merge kernel. CUDA tensors go through the
    `vmamba::cross_scan` operator, whose kernel (`cuda_cross_scan`) checks the arguments; CPU
    tensors (interpreter) are checked here and go straight to the kernel.
    """
    if isinstance(x, torch.Tensor) and x.device.type == "cuda":
        from vmamba_fast import ops

        return ops.cross_scan(x)
    if not torch.compiler.is_compiling():
        check_grid("cross_scan", "x", x)
        check_device("cross_scan", x)
    return CrossScanFn.apply(x)


def cross_merge(ys: torch.Tensor) -> torch.Tensor:
    """`vmamba_ref.cross_merge` on the GPU: ys (b, 4, d, h, w) -> y (b, d, h, w), ys's dtype.

    The four routes are summed in float32 (float64 for float64) and rounded once, so low-precision
    results can differ from the reference's in-dtype accumulation by one rounding.
    Differentiable; its backward is the cross-scan kernel. CUDA tensors go through the
    `vmamba::cross_merge` operator, whose kernel (`cuda_cross_merge`) checks the arguments; CPU
    tensors (interpreter) are checked here and go straight to the kernel.
    """
    if isinstance(ys, torch.Tensor) and ys.device.type == "cuda":
        from vmamba_fast import ops

        return ops.cross_merge(ys)
    if not torch.compiler.is_compiling():
        _check_ys("cross_merge", ys)
    return CrossMergeFn.apply(ys)
