"""Triton SS2D core: cross-scan, selective scan on the four routes and cross-merge in one kernel.

VMamba section 3.3: y = merge(S6_k(scan_k(x)) for k in 0..3), with the contract of
`vmamba_ref.ss2d_core`: every input on the grid, x (b, d, h, w), delta (b, 4, d, h, w),
B, C (b, 4, n, h, w), A (4*d, n), D, delta_bias (4*d,) -> y (b, d, h, w).

Memory traffic. Unfused, cross-scan writes four copies of x (4*b*d*l elements) that the scan
reads back, the scan writes four outputs (4*b*d*l) that cross-merge reads back: 16*b*d*l
element moves besides the scan's own. Here the scan kernel of `selective_scan.py` runs with
`ROUTE_ORDER`: program (i_d, k, i_b) reads step t of its route at grid column
`route_position(t, k)` of x, delta, B and C, and adds its outputs at the same columns of one
(b, d, l) map. The four scanned copies never exist (x is read once per route, as the unfused
scan reads its four copies); the price is that routes 1 and 3 read the grid column by column,
with a stride of w elements, which coalesces worse than the row routes on a GPU.

The merge adds the four routes with atomic float32 adds (float64 for float64), so the order of
the four terms, and the last bit of the sum, can vary between runs; the gradient of x is
accumulated the same way. Every other gradient is written once or reduced from per-program partial
sums (see `selective_scan.py`).

Official implementation: `cross_selective_scan` in VMamba's `vmamba.py`, which calls
`CrossScanF`, `selective_scan_cuda_oflex` and `CrossMergeF` as three kernels on route-ordered
copies. Deviation: one kernel on grid-ordered inputs, as the reference's contract allows.
"""

from __future__ import annotations

import torch

from vmamba_fast.triton.cross_scan import check_device
from vmamba_fast.triton.selective_scan import ScanBlocks, launch_bwd, launch_fwd, scan_blocks
from vmamba_ref.contract import (
    ROUTES,
    check_selective_scan_args,
    check_shape,
    check_ss2d_core_args,
    compute_dtype,
)


def _check(
    fn: str,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    """The reference's checks, then the device's; returns (b, d, h, w, n).

    The reference checks the grid layouts as `fn`, then runs the selective scan on the
    route-ordered copies, which checks them as "selective_scan": the same check on stand-ins of
    their shapes (no copies) gives the same errors.
    """
    b, d, h, w, n = check_ss2d_core_args(fn, x, delta, A, B, C)
    l = h * w
    scan_fn = "selective_scan" if fn == "ss2d_core" else fn
    check_selective_scan_args(
        scan_fn,
        x.new_empty(()).expand(b, ROUTES * d, l),  # stands for (b, k*d, l) in route order
        delta.new_empty(()).expand(b, ROUTES * d, l),
        A,
        B.new_empty(()).expand(b, ROUTES, n, l),  # stands for (b, k, n, l) in route order
        C.new_empty(()).expand(b, ROUTES, n, l),
        D,
        delta_bias,
    )
    check_device(fn, x)
    return b, d, h, w, n


def ss2d_core_fwd(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    store_checkpoints: bool,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward launcher on checked tensors: (y (b, d, h, w) in the computation dtype, the
    chunk-start states (b, 4*d, chunks, n) or None)."""
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    blocks = blocks or scan_blocks(d, n, l, route_order=True)
    y = torch.zeros(b, d, l, dtype=compute_dtype(x.dtype), device=x.device)  # (b, d, l) grid
    _, ckpt = launch_fwd(
        x.contiguous().view(b, d, l),  # (b, d, l)
        delta.contiguous().view(b, ROUTES * d, l),  # (b, k, d, h, w) -> (b, k*d, l)
        A.contiguous(),
        B.contiguous().view(b, ROUTES, n, l),  # (b, k, n, h, w) -> (b, k, n, l)
        C.contiguous().view(b, ROUTES, n, l),  # (b, k, n, h, w) -> (b, k, n, l)
        None if D is None else D.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(),
        None,
        y,
        d=d, grid_hw=(h, w), delta_softplus=delta_softplus, store_checkpoints=store_checkpoints,
        blocks=blocks,
    )  # fmt: skip
    return y.view(b, d, h, w), ckpt


def ss2d_core_bwd(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    ckpt: torch.Tensor,
    gy: torch.Tensor,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Backward launcher: (gx, gdelta, gA, gB, gC, gD, gdelta_bias), each in its input's dtype
    and shape (None for absent inputs). `ckpt` from `ss2d_core_fwd` with the same `blocks`."""
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    blocks = blocks or scan_blocks(d, n, l, route_order=True)
    gx = torch.zeros(b, d, l, dtype=compute_dtype(x.dtype), device=x.device)  # (b, d, l) grid
    gdelta, gA, gB, gC, gD, gdelta_bias, _ = launch_bwd(
        x.contiguous().view(b, d, l),  # (b, d, l)
        delta.contiguous().view(b, ROUTES * d, l),  # (b, k*d, l)
        A.contiguous(),
        B.contiguous().view(b, ROUTES, n, l),  # (b, k, n, l)
        C.contiguous().view(b, ROUTES, n, l),  # (b, k, n, l)
        None if D is None else D.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(),
        ckpt,
        gy.contiguous().view(b, d, l),  # (b, d, l)
        None,
        gx,
        d=d, grid_hw=(h, w), delta_softplus=delta_softplus, has_initial_state=False,
        blocks=blocks,
    )  # fmt: skip
    return (
        gx.view(b, d, h, w).to(x.dtype),
        gdelta.view(b, ROUTES, d, h, w),  # (b, k*d, l) -> (b, k, d, h, w)
        gA.to(A.dtype),
        gB.view(b, ROUTES, n, h, w).to(B.dtype),  # (b, k, n, l) -> (b, k, n, h, w)
        gC.view(b, ROUTES, n, h, w).to(C.dtype),  # (b, k, n, l) -> (b, k, n, h, w)
        None if D is None else gD.to(D.dtype),
        None if delta_bias is None else gdelta_bias.to(delta_bias.dtype),
    )


def cuda_ss2d_core_fwd(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """The CUDA kernel of the `vmamba::ss2d_core_fwd` operator (vmamba_fast/ops.py), whose CPU
    kernel is Numba's: y (b, d, h, w) in the computation dtype."""
    _check("vmamba::ss2d_core_fwd", x, delta, A, B, C, D, delta_bias)
    y, _ = ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus, False)
    return y


def cuda_ss2d_core_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, ...]:
    """The CUDA kernel of the `vmamba::ss2d_core_bwd` operator: (dx, ddelta, dA, dB, dC, dD,
    ddelta_bias), each in its input's dtype; for a D or delta_bias that is None, the gradient
    with respect to a zero one, in the computation dtype. Recomputes the chunk-start states
    with a forward pass first (the operator keeps only its inputs)."""
    fn = "vmamba::ss2d_core_bwd"
    b, d, h, w, n = _check(fn, x, delta, A, B, C, D, delta_bias)
    check_shape(fn, "dy", dy, (b, d, h, w), "b d h w")
    dtype = compute_dtype(x.dtype)
    D = torch.zeros(ROUTES * d, dtype=dtype, device=x.device) if D is None else D  # (k*d,)
    if delta_bias is None:
        delta_bias = torch.zeros(ROUTES * d, dtype=dtype, device=x.device)  # (k*d,)
    blocks = scan_blocks(d, n, h * w, route_order=True)
    _, ckpt = ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus, True, blocks)
    return ss2d_core_bwd(x, delta, A, B, C, D, delta_bias, delta_softplus, ckpt, dy, blocks)


class SS2DCoreFn(torch.autograd.Function):
    """The fused SS2D core with its recomputing backward."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_softplus, needs_grad, blocks):
        y, ckpt = ss2d_core_fwd(
            x, delta, A, B, C, D, delta_bias, delta_softplus, needs_grad, blocks
        )
        if needs_grad:
            ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, ckpt)
        ctx.delta_softplus, ctx.blocks = delta_softplus, blocks
        return y

    @staticmethod
    def backward(ctx, gy):
        x, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        grads = ss2d_core_bwd(
            x, delta, A, B, C, D, delta_bias, ctx.delta_softplus, ckpt, gy, ctx.blocks
        )
        return (*grads, None, None, None)


def ss2d_core_blocked(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    *,
    blocks: ScanBlocks | None,
) -> torch.Tensor:
    """`ss2d_core` with an explicit tile, for tests and tuning.

    With `blocks=None` (the default tile) CUDA tensors go through the `vmamba::ss2d_core_fwd`
    operator, whose CUDA kernel is `cuda_ss2d_core_fwd`; otherwise, and for CPU tensors in the
    interpreter (where the operator's CPU kernel is Numba's), through `SS2DCoreFn`.
    """
    if not torch.compiler.is_compiling():
        _check("ss2d_core", x, delta, A, B, C, D, delta_bias)
    if x.device.type == "cuda" and blocks is None:
        from vmamba_fast import ops

        return ops.ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus)
    tensors = (x, delta, A, B, C, D, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return SS2DCoreFn.apply(*tensors, delta_softplus, needs_grad, blocks)


def ss2d_core(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """`vmamba_ref.ss2d_core` as one Triton kernel: route-ordered reads, merged writes.

    Args:
        x: the feature map (b, d, h, w), the input u of every route.
        delta: step-size logits of each route on the grid (b, 4, d, h, w), x's dtype.
        A: state matrix diagonal (4*d, n).
        B, C: each route's projections on the grid (b, 4, n, h, w), x's dtype.
        D: skip weights (4*d,) or None.
        delta_bias: added to delta before softplus (4*d,) or None.
        delta_softplus: apply softplus to delta + delta_bias.

    Returns:
        y (b, d, h, w), the sum over the four routes, in float32 (float64 for float64 x).

    Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was
    imported; differentiable in every tensor argument.
    """
    return ss2d_core_blocked(x, delta, A, B, C, D, delta_bias, delta_softplus, blocks=None)
