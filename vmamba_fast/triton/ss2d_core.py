"""Triton SS2D core: cross-scan, selective scan on the four routes and cross-merge in one kernel.

VMamba section 3.3: y = merge(S6_k(scan_k(x)) for k in 0..3), with the contract of
`vmamba_ref.ss2d_core`: every input on the grid, x (b, d, h, w), delta (b, 4, d, h, w),
B, C (b, 4, n, h, w), A (4*d, n), D, delta_bias (4*d,) -> y (b, d, h, w).

Memory traffic. Unfused, cross-scan writes four copies of x (4*b*d*l elements) that the scan
reads back, the scan writes four outputs (4*b*d*l) that cross-merge reads back: 16*b*d*l
element moves besides the scan's own. Here program (i_d, i_k, i_b) reads step t of its route at
grid column `route_position(t, i_k)` of x, delta, B and C, and adds its outputs at the same
columns of one (b, d, l) map. The four scanned copies never exist (x is read once per route, as
the unfused scan reads its four copies); the price is that routes 1 and 3 read the grid column
by column, with a stride of w elements, which coalesces worse than the row routes on a GPU
(docs/kernels.md, "Fusing cross-scan into the scan").

The recurrence is the selective scan's (`selective_scan.py` explains it): both files' kernels
call the chunk functions of `common.py`, and differ only in addressing. The tiles are the
selective scan's `scan_blocks` with `route_order=True`.

The merge adds the four routes with atomic float32 adds (float64 for float64), so the order of
the four terms, and the last bit of the sum, can vary between runs; the gradient of x is
accumulated the same way. Every other gradient is written once or reduced from per-program partial
sums, as in `selective_scan.py`.

Official implementation: `cross_selective_scan` in VMamba's `vmamba.py`, which calls
`CrossScanF`, `selective_scan_cuda_oflex` and `CrossMergeF` as three kernels on route-ordered
copies. Deviation: one kernel on grid-ordered inputs, as the reference's contract allows; no
initial state and no last state, which the SS2D core does not have.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vmamba_fast.triton.common import (
    acc_dtype,
    check_device,
    contiguous_or_none,
    load_channel_params,
    route_position,
    scan_chunk_bwd,
    scan_chunk_fwd,
)
from vmamba_fast.triton.selective_scan import ScanBlocks, bwd_warps, scan_blocks
from vmamba_ref.contract import (
    ROUTES,
    check_selective_scan_args,
    check_shape,
    check_ss2d_core_args,
    compute_dtype,
)


@triton.jit
def _fwd_kernel(
    p_x, p_delta, p_A, p_B, p_C, p_D, p_delta_bias, p_y, p_ckpt,
    d, l, n, h, w,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    STORE_CKPT: tl.constexpr,
):  # fmt: skip
    """Forward scan of channels [i_d*BLOCK_D, +BLOCK_D) of route i_k in batch i_b, on the grid.

    Grid (cdiv(d, BLOCK_D), 4, b); program (i_d, i_k, i_b). Channel o_d of route i_k is row
    i_k*d + o_d of the (4*d)-sized tensors. The last axis of every (., l) tensor is the (h, w)
    grid flattened row-major, and step t of route i_k is at its column
    `route_position(t, i_k, h, w, l)`. All pointers are contiguous:

        p_x          x      (b, d, l)    strides (d*l, l, 1), the input u of all four routes
        p_delta      delta  (b, 4*d, l)  strides (4*d*l, l, 1)
        p_A          A      (4*d, n)     strides (n, 1)
        p_B, p_C     B, C   (b, 4, n, l) strides (4*n*l, n*l, l, 1)
        p_D          D      (4*d,)       stride 1, read if HAS_D
        p_delta_bias        (4*d,)       stride 1, read if HAS_DELTA_BIAS
        p_y          y      (b, d, l)    strides (d*l, l, 1), ACC, zeroed by the caller: each
                                          route atomically adds its outputs
        p_ckpt       state at the start of each chunk (b, 4*d, cdiv(l, BLOCK_T), n), strides
                     (4*d*cdiv(l, BLOCK_T)*n, cdiv(l, BLOCK_T)*n, n, 1), ACC; written if
                     STORE_CKPT, for the backward
    """
    i_d, i_k, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    k = tl.num_programs(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the route
    o_n = tl.arange(0, BLOCK_N)
    o_j = tl.arange(0, BLOCK_T)  # step within a chunk
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_kd = i_k * d + o_d  # channels within k*d
    r_kd = i_b * k * d + o_kd  # rows of delta and the checkpoints, (b, k*d, .)
    r_x = i_b * d + o_d  # rows of x and y, (b, d, l), shared by the routes
    r_bc = (i_b * k + i_k) * n + o_n  # rows of B, C viewed as (b*k*n, l)
    n_chunks = tl.cdiv(l, BLOCK_T)

    b_A, b_D, b_delta_bias = load_channel_params(
        p_A, p_D, p_delta_bias, o_kd, o_n, m_d, n, BLOCK_D, ACC, HAS_D, HAS_DELTA_BIAS
    )  # (BD, BN), (BD,), (BD,)
    b_state = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # carried across chunks

    for i_t in range(0, n_chunks):
        if STORE_CKPT:
            p_ckpt_t = p_ckpt + (r_kd[:, None] * n_chunks + i_t) * n + o_n[None, :]
            tl.store(p_ckpt_t, b_state, mask=m_dn)
        o_t = i_t * BLOCK_T + o_j
        m_t = o_t < l
        o_p = route_position(o_t, i_k, h, w, l)  # grid column of each step
        b_y, b_state = scan_chunk_fwd(
            p_x, p_delta, p_B, p_C, r_x, r_kd, r_bc, o_p, m_d, m_n, m_t, l,
            b_A, b_D, b_delta_bias, b_state,
            BLOCK_T, ACC, DELTA_SOFTPLUS, HAS_DELTA_BIAS,
        )  # fmt: skip
        p_y_t = p_y + r_x[:, None] * l + o_p[None, :]
        tl.atomic_add(p_y_t, b_y, mask=m_d[:, None] & m_t[None, :])


@triton.jit
def _bwd_kernel(
    p_x, p_delta, p_A, p_B, p_C, p_D, p_delta_bias, p_ckpt, p_gy,
    p_gx, p_gdelta, p_gA, p_gB, p_gC, p_gD, p_gdelta_bias,
    d, l, n, h, w,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
):  # fmt: skip
    """Backward of channels [i_d*BLOCK_D, +BLOCK_D) of route i_k in batch i_b, chunks last first.

    Grid (cdiv(d, BLOCK_D), 4, b) as the forward, n_blocks = cdiv(d, BLOCK_D); grid columns of
    steps as in `_fwd_kernel`. Pointers are contiguous; p_x, p_delta, p_A, p_B, p_C, p_D,
    p_delta_bias and p_ckpt as in `_fwd_kernel`.

        p_gy           gradient of y (b, d, l), strides (d*l, l, 1), any float dtype
        p_gx           gradient of x (b, d, l), strides (d*l, l, 1), ACC, zeroed by the caller:
                       each route atomically adds its share (the four routes read x)
        p_gdelta       (b, 4*d, l), strides (4*d*l, l, 1), stored in its element type
        p_gA           per-batch partial sums (b, 4*d, n), strides (4*d*n, n, 1), ACC
        p_gB, p_gC     per-channel-block partial sums (b, 4, n_blocks, n, l), strides
                       (4*n_blocks*n*l, n_blocks*n*l, n*l, l, 1), ACC
        p_gD, p_gdelta_bias  per-batch partial sums (b, 4*d), strides (4*d, 1), ACC, written
                       if HAS_D / HAS_DELTA_BIAS
    """
    i_d, i_k, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n_blocks, k = tl.num_programs(0), tl.num_programs(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the route
    o_n = tl.arange(0, BLOCK_N)
    o_j = tl.arange(0, BLOCK_T)  # step within a chunk
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_kd = i_k * d + o_d  # channels within k*d
    r_kd = i_b * k * d + o_kd  # rows of delta, gdelta and the checkpoints, (b, k*d, .)
    r_x = i_b * d + o_d  # rows of x, gy and gx, (b, d, l)
    r_bc = (i_b * k + i_k) * n + o_n  # rows of B, C viewed as (b*k*n, l)
    r_part = ((i_b * k + i_k) * n_blocks + i_d) * n + o_n  # rows of gB, gC partials
    n_chunks = tl.cdiv(l, BLOCK_T)

    b_A, b_D, b_delta_bias = load_channel_params(
        p_A, p_D, p_delta_bias, o_kd, o_n, m_d, n, BLOCK_D, ACC, HAS_D, HAS_DELTA_BIAS
    )  # (BD, BN), (BD,), (BD,)
    b_g = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # adjoint after the chunk: 0 after the last
    b_gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    b_gD = tl.zeros((BLOCK_D,), dtype=ACC)
    b_gdelta_bias = tl.zeros((BLOCK_D,), dtype=ACC)

    for i_back in range(0, n_chunks):
        i_t = n_chunks - 1 - i_back
        # Steps of the chunk in time order (o_t) and in reverse time order (o_s), and their
        # grid columns.
        o_t = i_t * BLOCK_T + o_j
        o_s = i_t * BLOCK_T + (BLOCK_T - 1) - o_j
        o_p = route_position(o_t, i_k, h, w, l)
        o_ps = route_position(o_s, i_k, h, w, l)
        o_ps1 = route_position(o_s + 1, i_k, h, w, l)
        m_dt = m_d[:, None] & (o_t < l)[None, :]
        m_nt = m_n[:, None] & (o_t < l)[None, :]
        p_ckpt_t = p_ckpt + (r_kd[:, None] * n_chunks + i_t) * n + o_n[None, :]
        b_state = tl.load(p_ckpt_t, mask=m_dn, other=0.0)  # (BD, BN) at the chunk's start
        b_g, b_gx, b_gdelta, b_gA_t, b_gB, b_gC, b_gD_t, _ = scan_chunk_bwd(
            p_x, p_delta, p_B, p_C, p_gy, r_x, r_kd, r_bc,
            o_t, o_p, o_s, o_ps, o_ps1, m_d, m_n, l,
            b_A, b_D, b_delta_bias, b_state, b_g,
            BLOCK_T, ACC, DELTA_SOFTPLUS, HAS_DELTA_BIAS,
        )  # fmt: skip
        b_gA += b_gA_t  # (BD, BN)
        if HAS_D:
            b_gD += b_gD_t  # (BD,)
        if HAS_DELTA_BIAS:
            b_gdelta_bias += tl.sum(b_gdelta, axis=1)  # (BD,)

        p_gdelta_t = p_gdelta + r_kd[:, None] * l + o_p[None, :]
        tl.store(p_gdelta_t, b_gdelta.to(p_gdelta.dtype.element_ty), mask=m_dt)
        tl.atomic_add(p_gx + r_x[:, None] * l + o_p[None, :], b_gx, mask=m_dt)
        tl.store(p_gB + r_part[:, None] * l + o_p[None, :], b_gB, mask=m_nt)
        tl.store(p_gC + r_part[:, None] * l + o_p[None, :], b_gC, mask=m_nt)

    tl.store(p_gA + r_kd[:, None] * n + o_n[None, :], b_gA, mask=m_dn)
    if HAS_D:
        tl.store(p_gD + r_kd, b_gD, mask=m_d)
    if HAS_DELTA_BIAS:
        tl.store(p_gdelta_bias + r_kd, b_gdelta_bias, mask=m_d)


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
    *,
    store_checkpoints: bool = False,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `_fwd_kernel` on checked tensors, arguments in the order of the
    `vmamba::ss2d_core_fwd` operator: (y (b, d, h, w) in the computation dtype, the chunk-start
    states (b, 4*d, chunks, n) if `store_checkpoints` else None)."""
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    blocks = blocks or scan_blocks(d, n, l, route_order=True)
    acc = compute_dtype(x.dtype)
    n_chunks = triton.cdiv(l, blocks.block_t)
    y = torch.zeros(b, d, l, dtype=acc, device=x.device)  # (b, d, l) grid, the routes add in
    ckpt = (
        torch.empty(b, ROUTES * d, n_chunks, n, dtype=acc, device=x.device)  # (b, k*d, chunks, n)
        if store_checkpoints
        else y  # not written
    )
    D, delta_bias = contiguous_or_none(D), contiguous_or_none(delta_bias)
    # One program per (channel block, route, batch); the sequence loop runs inside.
    grid = (triton.cdiv(d, blocks.block_d), ROUTES, b)
    _fwd_kernel[grid](
        x.contiguous().view(b, d, l),  # (b, d, h, w) -> (b, d, l)
        delta.contiguous().view(b, ROUTES * d, l),  # (b, k, d, h, w) -> (b, k*d, l)
        A.contiguous(),
        B.contiguous().view(b, ROUTES, n, l),  # (b, k, n, h, w) -> (b, k, n, l)
        C.contiguous().view(b, ROUTES, n, l),  # (b, k, n, h, w) -> (b, k, n, l)
        y if D is None else D,
        y if delta_bias is None else delta_bias,
        y, ckpt,
        d, l, n, h, w,
        BLOCK_D=blocks.block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_T=blocks.block_t,
        ACC=acc_dtype(x.dtype), DELTA_SOFTPLUS=delta_softplus,
        HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None, STORE_CKPT=store_checkpoints,
        num_warps=blocks.num_warps,
    )  # fmt: skip
    return y.view(b, d, h, w), (ckpt if store_checkpoints else None)


def ss2d_core_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    *,
    ckpt: torch.Tensor | None = None,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Run `_bwd_kernel` on checked tensors, arguments in the order of the
    `vmamba::ss2d_core_bwd` operator, and reduce its partial sums.

    `dy` (b, d, h, w) is the gradient of y. `ckpt` holds the chunk-start states from
    `ss2d_core_fwd(..., store_checkpoints=True, blocks=blocks)`; None recomputes them with that
    forward first. Returns (gx, gdelta, gA, gB, gC, gD, gdelta_bias), each in its input's dtype
    and shape, None for absent inputs.
    """
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    blocks = blocks or scan_blocks(d, n, l, route_order=True)
    if ckpt is None:
        _, ckpt = ss2d_core_fwd(
            x, delta, A, B, C, D, delta_bias, delta_softplus, store_checkpoints=True, blocks=blocks
        )
    acc = compute_dtype(x.dtype)
    n_blocks = triton.cdiv(d, blocks.block_d)
    delta = delta.contiguous().view(b, ROUTES * d, l)  # (b, k, d, h, w) -> (b, k*d, l)
    gx = torch.zeros(b, d, l, dtype=acc, device=x.device)  # (b, d, l) grid, the routes add in
    gdelta = torch.empty_like(delta)  # (b, k*d, l)
    gA = torch.empty(b, ROUTES * d, n, dtype=acc, device=x.device)  # (b, k*d, n) per batch
    gB = torch.empty(b, ROUTES, n_blocks, n, l, dtype=acc, device=x.device)  # per channel block
    gC = torch.empty(b, ROUTES, n_blocks, n, l, dtype=acc, device=x.device)  # per channel block
    gD = torch.empty(b, ROUTES * d, dtype=acc, device=x.device) if D is not None else None
    gdelta_bias = (
        torch.empty(b, ROUTES * d, dtype=acc, device=x.device) if delta_bias is not None else None
    )  # (b, k*d)
    D_, delta_bias_ = contiguous_or_none(D), contiguous_or_none(delta_bias)
    # One program per (channel block, route, batch), as the forward; chunks run last to first.
    grid = (n_blocks, ROUTES, b)
    _bwd_kernel[grid](
        x.contiguous().view(b, d, l),  # (b, d, h, w) -> (b, d, l)
        delta,
        A.contiguous(),
        B.contiguous().view(b, ROUTES, n, l),  # (b, k, n, h, w) -> (b, k, n, l)
        C.contiguous().view(b, ROUTES, n, l),  # (b, k, n, h, w) -> (b, k, n, l)
        gx if D_ is None else D_,
        gx if delta_bias_ is None else delta_bias_,
        ckpt,
        dy.contiguous().view(b, d, l),  # (b, d, h, w) -> (b, d, l)
        gx, gdelta, gA, gB, gC,
        gA if gD is None else gD,
        gA if gdelta_bias is None else gdelta_bias,
        d, l, n, h, w,
        BLOCK_D=blocks.block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_T=blocks.block_t,
        ACC=acc_dtype(x.dtype), DELTA_SOFTPLUS=delta_softplus,
        HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None,
        num_warps=bwd_warps(blocks, n),
    )  # fmt: skip
    return (
        gx.view(b, d, h, w).to(x.dtype),  # (b, d, l) -> (b, d, h, w)
        gdelta.view(b, ROUTES, d, h, w),  # (b, k*d, l) -> (b, k, d, h, w)
        gA.sum(0).to(A.dtype),  # (b, k*d, n) -> (k*d, n)
        gB.sum(2).view(b, ROUTES, n, h, w).to(B.dtype),  # (b, k, n_blocks, n, l) -> (b, k, n, h, w)
        gC.sum(2).view(b, ROUTES, n, h, w).to(C.dtype),  # (b, k, n_blocks, n, l) -> (b, k, n, h, w)
        None if D is None else gD.sum(0).to(D.dtype),  # (b, k*d) -> (k*d,)
        None if delta_bias is None else gdelta_bias.sum(0).to(delta_bias.dtype),  # (k*d,)
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
    kernel is Numba's: y (b, d, h, w) in the computation dtype. The one place the operator's
    arguments are checked."""
    _check("vmamba::ss2d_core_fwd", x, delta, A, B, C, D, delta_bias)
    y, _ = ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus)
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
    with respect to a zero one, in the computation dtype. The operator keeps only its inputs, so
    `ss2d_core_bwd` recomputes the chunk-start states with a forward pass first."""
    fn = "vmamba::ss2d_core_bwd"
    b, d, h, w, n = _check(fn, x, delta, A, B, C, D, delta_bias)
    check_shape(fn, "dy", dy, (b, d, h, w), "b d h w")
    dtype = compute_dtype(x.dtype)
    D = torch.zeros(ROUTES * d, dtype=dtype, device=x.device) if D is None else D  # (k*d,)
    if delta_bias is None:
        delta_bias = torch.zeros(ROUTES * d, dtype=dtype, device=x.device)  # (k*d,)
    return ss2d_core_bwd(dy, x, delta, A, B, C, D, delta_bias, delta_softplus)


class SS2DCoreFn(torch.autograd.Function):
    """The fused SS2D core with its recomputing backward."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_softplus, needs_grad, blocks):
        y, ckpt = ss2d_core_fwd(
            x, delta, A, B, C, D, delta_bias, delta_softplus,
            store_checkpoints=needs_grad, blocks=blocks,
        )  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, ckpt)
        ctx.delta_softplus, ctx.blocks = delta_softplus, blocks
        return y

    @staticmethod
    def backward(ctx, gy):
        x, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        grads = ss2d_core_bwd(
            gy, x, delta, A, B, C, D, delta_bias, ctx.delta_softplus, ckpt=ckpt, blocks=ctx.blocks
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
    operator, whose CUDA kernel `cuda_ss2d_core_fwd` checks the arguments; otherwise, and for
    CPU tensors in the interpreter (where the operator's CPU kernel is Numba's), they are
    checked here and run through `SS2DCoreFn`.
    """
    if isinstance(x, torch.Tensor) and x.device.type == "cuda" and blocks is None:
        from vmamba_fast import ops

        return ops.ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus)
    if not torch.compiler.is_compiling():
        _check("ss2d_core", x, delta, A, B, C, D, delta_bias)
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
