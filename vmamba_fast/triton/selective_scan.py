"""Triton selective scan (S6), forward and backward: one program per (batch, route, channel block).

Mamba (Gu & Dao 2023) section 3.2 and algorithm 2; VMamba section 3.2. For each inner channel of
route k, state index n and step t (the math of `vmamba_ref.selective_scan`; `h_t` is the paper's
state, `state` in code, since `h` is the grid height):

    dt_t  = softplus(delta_t + delta_bias)
    dA_t  = exp(dt_t * A[n])
    h_t   = dA_t * h_{t-1} + dt_t * B_t[n] * u_t            (h_{-1} = 0 or the initial state)
    y_t   = sum_n C_t[n] * h_t + D * u_t

Why a kernel: the recurrence needs to read u, delta (b, k*d, l) and B, C (b, k, n, l) and write
y (b, k*d, l) once, about `4 * (3*b*k*d*l + 2*b*k*n*l)` bytes in float32, while any composition
of PyTorch ops writes the (b, k*d, l, n) tensors dA, dBu and h to memory and reads them back.
The kernel keeps them in registers.

How the work is laid out. Program (i_d, i_k, i_b) owns channels [i_d*BLOCK_D, +BLOCK_D) of
route i_k in batch i_b, so every channel of a program shares the route's B and C. It walks the
sequence in chunks of BLOCK_T steps. A chunk's inputs are loaded as (BLOCK_D, BLOCK_T) tiles,
contiguous along time so the loads coalesce, and the chunk's recurrence is a parallel scan over
time of the pairs (dA_t, dBu_t) under the composition of affine maps

    (a_1, b_1) then (a_2, b_2)  =  (a_1 a_2,  a_2 b_1 + b_2),

with the state carried from the previous chunk folded into the first step. The state between
chunks lives in registers; everything is computed in float32 (float64 for float64 input).

Backward by recomputation. The adjoint of the state runs backwards in time:

    g_t = C_t * gy_t + dA_{t+1} * g_{t+1}        (g_{l-1} gets the last state's gradient too)

and every gradient is a product of g_t with quantities of the forward pass:

    gA[n]   += g_t * dA_t h_{t-1} * dt_t                    (summed over t, then batch)
    gdt_t    = sum_n g_t * (dA_t h_{t-1} * A[n] + B_t[n] u_t)
    gu_t     = sum_n g_t * B_t[n] * dt_t  +  D * gy_t
    gB_t[n] += g_t * dt_t * u_t,   gC_t[n] += gy_t * h_t    (summed over the route's channels)
    gD      += gy_t * u_t,   gdelta_t = gdt_t * sigmoid(delta_t + delta_bias)

(Gradients are named g* in this package, since dA is the discretized A.) The forward saves only
the state at each chunk start, (b, k*d, cdiv(l, BLOCK_T), n): 1/BLOCK_T of the full states.
(Through the `vmamba::selective_scan_bwd` operator, which keeps only the inputs, a forward pass
recomputes them first.) The backward walks the chunks last to first; in each it rescans the
states from the saved one, then scans the adjoint over the same chunk with its inputs loaded in
reverse time order, so the adjoint is again a forward scan, and flips the result to line it up
with the states. `dA_t h_{t-1}` is `h_t - dBu_t`, which needs no shifted copy of the states.

The recurrence of one chunk, forward and backward, is `scan_chunk_fwd` / `scan_chunk_bwd` of
`common.py`, which the fused SS2D core's kernels (`ss2d_core.py`) call too; the kernels here
only address the (b, k*d, l) layout, where step t of a sequence is column t. The default tiles
of both (`scan_blocks`) live here; docs/kernels.md says how they were measured.

Reductions: A, D and delta_bias are shared across the batch, B and C across a route's d
channels. Each program writes its own partial sums, (b, k*d, n) for A, (b, k*d) for D and
delta_bias, (b, k, cdiv(d, BLOCK_D), n, l) for B and C, and PyTorch sums them: deterministic,
and no atomics.

Dtypes: u, delta, B, C in float16, bfloat16, float32 or float64 (one dtype for the four); the
output and the last state in float32, float64 for float64 input, as the reference. Float64 runs
in float64 throughout; it is correct but slow on GPUs without fast float64.

Official implementation: Mamba's `selective_scan` CUDA kernels (csrc/selective_scan), which VMamba
ships as `selective_scan_cuda_oflex`. They too keep chunk-start states, rescan each chunk in the
backward and add up B/C gradients across channels. Deviations: Triton instead of CUDA; B/C
gradients as partial sums instead of atomics; the reverse scan as a flipped forward scan, because
Triton's `associative_scan(reverse=True)` is reported wrong for non-commutative combines
(triton-lang/triton#4362); an initial state and the last state's gradient are supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vmamba_fast.triton.common import (
    acc_dtype,
    check_device,
    contiguous_or_none,
    load_channel_params,
    scan_chunk_bwd,
    scan_chunk_fwd,
)
from vmamba_ref.contract import (
    check_selective_scan_args,
    check_shape,
    compute_dtype,
    is_kernel_call,
    scan_any_layout,
)


@triton.jit
def _fwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_delta_bias, p_initial_state,
    p_y, p_last_state, p_ckpt,
    d, l, n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr, STORE_CKPT: tl.constexpr,
):  # fmt: skip
    """Forward scan of channels [i_d*BLOCK_D, +BLOCK_D) of route i_k in batch i_b.

    Grid (cdiv(d, BLOCK_D), k, b); program (i_d, i_k, i_b). Channel o_d of route i_k is row
    i_k*d + o_d of the (k*d)-sized tensors; step t is column t. All pointers are contiguous:

        p_u          u      (b, k*d, l)  strides (k*d*l, l, 1)
        p_delta      delta  (b, k*d, l)  strides (k*d*l, l, 1)
        p_A          A      (k*d, n)     strides (n, 1)
        p_B, p_C     B, C   (b, k, n, l) strides (k*n*l, n*l, l, 1)
        p_D          D      (k*d,)       stride 1, read if HAS_D
        p_delta_bias        (k*d,)       stride 1, read if HAS_DELTA_BIAS
        p_initial_state h_{-1} (b, k*d, n) strides (k*d*n, n, 1), read if HAS_INITIAL_STATE
        p_y          y      (b, k*d, l)  strides (k*d*l, l, 1), ACC
        p_last_state h_{l-1} (b, k*d, n) strides (k*d*n, n, 1), ACC
        p_ckpt       state at the start of each chunk (b, k*d, cdiv(l, BLOCK_T), n),
                     strides (k*d*cdiv(l, BLOCK_T)*n, cdiv(l, BLOCK_T)*n, n, 1), ACC; written
                     if STORE_CKPT, for the backward
    """
    i_d, i_k, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    k = tl.num_programs(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the route
    o_n = tl.arange(0, BLOCK_N)
    o_j = tl.arange(0, BLOCK_T)  # step within a chunk
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_kd = i_k * d + o_d  # channels within k*d
    r_kd = i_b * k * d + o_kd  # rows of (b, k*d, .) tensors
    r_bc = (i_b * k + i_k) * n + o_n  # rows of B, C viewed as (b*k*n, l)
    n_chunks = tl.cdiv(l, BLOCK_T)

    b_A, b_D, b_delta_bias = load_channel_params(
        p_A, p_D, p_delta_bias, o_kd, o_n, m_d, n, BLOCK_D, ACC, HAS_D, HAS_DELTA_BIAS
    )  # (BD, BN), (BD,), (BD,)
    b_state = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # carried across chunks
    if HAS_INITIAL_STATE:
        p_state = p_initial_state + r_kd[:, None] * n + o_n[None, :]
        b_state = tl.load(p_state, mask=m_dn, other=0.0).to(ACC)

    for i_t in range(0, n_chunks):
        if STORE_CKPT:
            p_ckpt_t = p_ckpt + (r_kd[:, None] * n_chunks + i_t) * n + o_n[None, :]
            tl.store(p_ckpt_t, b_state, mask=m_dn)
        o_t = i_t * BLOCK_T + o_j
        m_t = o_t < l
        b_y, b_state = scan_chunk_fwd(
            p_u, p_delta, p_B, p_C, r_kd, r_kd, r_bc, o_t, m_d, m_n, m_t, l,
            b_A, b_D, b_delta_bias, b_state,
            BLOCK_T, ACC, DELTA_SOFTPLUS, HAS_DELTA_BIAS,
        )  # fmt: skip
        tl.store(p_y + r_kd[:, None] * l + o_t[None, :], b_y, mask=m_d[:, None] & m_t[None, :])
    tl.store(p_last_state + r_kd[:, None] * n + o_n[None, :], b_state, mask=m_dn)


@triton.jit
def _bwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_delta_bias, p_ckpt, p_gy, p_glast_state,
    p_gu, p_gdelta, p_gA, p_gB, p_gC, p_gD, p_gdelta_bias, p_ginitial_state,
    d, l, n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    HAS_GLAST_STATE: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
):  # fmt: skip
    """Backward of channels [i_d*BLOCK_D, +BLOCK_D) of route i_k in batch i_b, chunks last first.

    Grid (cdiv(d, BLOCK_D), k, b) as the forward; n_blocks = cdiv(d, BLOCK_D). Pointers are
    contiguous; p_u, p_delta, p_A, p_B, p_C, p_D, p_delta_bias and p_ckpt as in `_fwd_kernel`.

        p_gy           gradient of y (b, k*d, l), strides (k*d*l, l, 1), any float dtype
        p_glast_state  gradient of h_{l-1} (b, k*d, n), strides (k*d*n, n, 1), read if
                       HAS_GLAST_STATE
        p_gu, p_gdelta (b, k*d, l), strides (k*d*l, l, 1), stored in their element types
        p_gA           per-batch partial sums (b, k*d, n), strides (k*d*n, n, 1), ACC
        p_gB, p_gC     per-channel-block partial sums (b, k, n_blocks, n, l), strides
                       (k*n_blocks*n*l, n_blocks*n*l, n*l, l, 1), ACC
        p_gD, p_gdelta_bias  per-batch partial sums (b, k*d), strides (k*d, 1), ACC, written
                       if HAS_D / HAS_DELTA_BIAS
        p_ginitial_state  gradient of h_{-1} (b, k*d, n), strides (k*d*n, n, 1), ACC, written
                       if HAS_INITIAL_STATE
    """
    i_d, i_k, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n_blocks, k = tl.num_programs(0), tl.num_programs(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the route
    o_n = tl.arange(0, BLOCK_N)
    o_j = tl.arange(0, BLOCK_T)  # step within a chunk
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_kd = i_k * d + o_d  # channels within k*d
    r_kd = i_b * k * d + o_kd  # rows of (b, k*d, .) tensors
    r_bc = (i_b * k + i_k) * n + o_n  # rows of B, C viewed as (b*k*n, l)
    r_part = ((i_b * k + i_k) * n_blocks + i_d) * n + o_n  # rows of gB, gC partials
    n_chunks = tl.cdiv(l, BLOCK_T)

    b_A, b_D, b_delta_bias = load_channel_params(
        p_A, p_D, p_delta_bias, o_kd, o_n, m_d, n, BLOCK_D, ACC, HAS_D, HAS_DELTA_BIAS
    )  # (BD, BN), (BD,), (BD,)
    # Adjoint carried backwards across chunks: g at the first step after the current chunk,
    # which for the last chunk is the last state's own gradient.
    b_g = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    if HAS_GLAST_STATE:
        p_g = p_glast_state + r_kd[:, None] * n + o_n[None, :]
        b_g = tl.load(p_g, mask=m_dn, other=0.0).to(ACC)
    b_gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    b_ginitial_state = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    b_gD = tl.zeros((BLOCK_D,), dtype=ACC)
    b_gdelta_bias = tl.zeros((BLOCK_D,), dtype=ACC)

    for i_back in range(0, n_chunks):
        i_t = n_chunks - 1 - i_back
        # Steps of the chunk in time order (o_t) and in reverse time order (o_s).
        o_t = i_t * BLOCK_T + o_j
        o_s = i_t * BLOCK_T + (BLOCK_T - 1) - o_j
        m_dt = m_d[:, None] & (o_t < l)[None, :]
        m_nt = m_n[:, None] & (o_t < l)[None, :]
        p_ckpt_t = p_ckpt + (r_kd[:, None] * n_chunks + i_t) * n + o_n[None, :]
        b_state = tl.load(p_ckpt_t, mask=m_dn, other=0.0)  # (BD, BN) at the chunk's start
        b_g, b_gu, b_gdelta, b_gA_t, b_gB, b_gC, b_gD_t, b_gstate_in = scan_chunk_bwd(
            p_u, p_delta, p_B, p_C, p_gy, r_kd, r_kd, r_bc,
            o_t, o_t, o_s, o_s, o_s + 1, m_d, m_n, l,
            b_A, b_D, b_delta_bias, b_state, b_g,
            BLOCK_T, ACC, DELTA_SOFTPLUS, HAS_DELTA_BIAS,
        )  # fmt: skip
        b_gA += b_gA_t  # (BD, BN)
        if HAS_D:
            b_gD += b_gD_t  # (BD,)
        if HAS_DELTA_BIAS:
            b_gdelta_bias += tl.sum(b_gdelta, axis=1)  # (BD,)
        if HAS_INITIAL_STATE:
            b_ginitial_state = b_gstate_in  # the first chunk's is the last one written

        o_tile = r_kd[:, None] * l + o_t[None, :]  # offsets of the (BD, BT) tiles of gdelta, gu
        tl.store(p_gdelta + o_tile, b_gdelta.to(p_gdelta.dtype.element_ty), mask=m_dt)
        tl.store(p_gu + o_tile, b_gu.to(p_gu.dtype.element_ty), mask=m_dt)
        tl.store(p_gB + r_part[:, None] * l + o_t[None, :], b_gB, mask=m_nt)
        tl.store(p_gC + r_part[:, None] * l + o_t[None, :], b_gC, mask=m_nt)

    tl.store(p_gA + r_kd[:, None] * n + o_n[None, :], b_gA, mask=m_dn)
    if HAS_D:
        tl.store(p_gD + r_kd, b_gD, mask=m_d)
    if HAS_DELTA_BIAS:
        tl.store(p_gdelta_bias + r_kd, b_gdelta_bias, mask=m_d)
    if HAS_INITIAL_STATE:
        tl.store(p_ginitial_state + r_kd[:, None] * n + o_n[None, :], b_ginitial_state, mask=m_dn)


# ------------------------------------------------------------------------------------------------
# Default tiles, of this file's kernels and of the fused SS2D core's (`ss2d_core.py`, which asks
# with route_order=True): the one place they are chosen.
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanBlocks:
    """Tile of one program: `block_d` channels x `block_t` steps (x all n states), powers of 2,
    and the warps that run the forward (the backward takes more where its tile needs them)."""

    block_d: int
    block_t: int
    num_warps: int = 4


# A program keeps a handful of (block_d, block_n, block_t) tiles in registers. At 4 values per
# thread per tile the backward needs about 170 registers on sm_90 and the forward 80; at 8 per
# thread with n > 1 the backward still fits in 255 without spilling (ptxas resource counts of
# the compiled kernels). The backward therefore runs one warp per 128 tile elements, at least
# the tile's warps and at most 4.
MIN_BLOCK_T = 16  # short sequences pad to 16 steps rather than degenerate tiles
BWD_ELEMENTS_PER_WARP = 128
# Defaults measured with benchmarks/tune_triton.py on an H100 at VMamba-T stage 1 (b=128, d=96,
# l=56*56, n=1), float32, against the earlier 8 x 64 tile of 4 warps. A forward that stores
# checkpoints and its backward must share a tile, so each layout has one, the best for both:
# - plain scan: 8 x 32, 2 warps: forward 0.87 ms against 0.90 (bfloat16 0.91 against 1.00),
#   backward 2.41 ms against 3.46 for the best long-chunk tile (4 x 128);
# - SS2D core in route order, on maps of more than ROUTE_LONG_L pixels (stages 1, 2): 2 x 128, 4
#   warps: forward 3.19 ms against 6.62 (bfloat16 2.76 against 5.11), backward 7.99 ms against
#   9.78 for 2 x 256. Its column routes step w elements apart, so a 32-byte sector read at step t
#   also holds steps t + h, t + 2h, ...: long chunks of few channels find them still in cache.
#   On smaller maps (stages 3, 4: l = 196, 49) 8 x 32 with 4 warps is 1.04-1.14x faster than
#   2 x 128 / 4 x 64, float32 and bfloat16, as its chunks pad fewer steps.
# n > 1 keeps the earlier tile (budget 1024, up to 64 steps, 4 warps).
TILE_N1 = (32, 256, 2)  # (max block_t, budget, warps)
# A plain forward that stores no checkpoints (inference) is free to take its own tile: 4 x 128,
# 2 warps, 0.83 ms against 0.87 for 8 x 32 (the bfloat16 times are within 1%).
TILE_N1_INFERENCE = (128, 512, 2)
TILE_ROUTE_LONG, TILE_ROUTE_SHORT, ROUTE_LONG_L = (128, 256, 4), (32, 256, 4), 512
TILE_N = (64, 1024, 4)


def tile_rule(n: int, l: int, route_order: bool, inference: bool) -> tuple[int, int, int]:
    """(max block_t, tile budget, warps) of the default tile."""
    if n > 1:
        return TILE_N
    if route_order:
        return TILE_ROUTE_LONG if l > ROUTE_LONG_L else TILE_ROUTE_SHORT
    return TILE_N1_INFERENCE if inference else TILE_N1


def scan_blocks(
    d: int, n: int, l: int, route_order: bool = False, inference: bool = False
) -> ScanBlocks:
    """Default tile: MIN_BLOCK_T up to the rule's longest chunk, then as many channels as the
    tile budget allows; `route_order` for the fused SS2D core's grid reads, `inference` for a
    forward that stores no checkpoints (a backward needs the tile of the forward it follows)."""
    block_n = triton.next_power_of_2(n)
    max_t, budget, warps = tile_rule(block_n, l, route_order, inference)
    block_t = min(max(triton.next_power_of_2(l), MIN_BLOCK_T), max_t)
    block_d = max(1, min(triton.next_power_of_2(d), budget // (block_n * block_t)))
    return ScanBlocks(block_d, block_t, warps)


def bwd_warps(blocks: ScanBlocks, n: int) -> int:
    """Warps of the backward: one per BWD_ELEMENTS_PER_WARP tile elements, at least the tile's
    and at most 4 (4 warps hold the n > 1 tiles without spilling)."""
    elements = blocks.block_d * triton.next_power_of_2(n) * blocks.block_t
    return max(blocks.num_warps, min(elements // BWD_ELEMENTS_PER_WARP, 4))


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
    *,
    store_checkpoints: bool = False,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run `_fwd_kernel` on checked tensors, arguments in the order of the
    `vmamba::selective_scan_fwd` operator: (y (b, k*d, l), last_state (b, k*d, n), the
    chunk-start states (b, k*d, chunks, n) if `store_checkpoints` else None), in the
    computation dtype. `blocks` defaults to `scan_blocks`' tile."""
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    d = kd // k
    blocks = blocks or scan_blocks(d, n, l, inference=not store_checkpoints)
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D, delta_bias, initial_state = (contiguous_or_none(t) for t in (D, delta_bias, initial_state))
    acc = compute_dtype(u.dtype)
    n_chunks = triton.cdiv(l, blocks.block_t)
    y = torch.empty(b, kd, l, dtype=acc, device=u.device)  # (b, k*d, l)
    last_state = torch.empty(b, kd, n, dtype=acc, device=u.device)  # (b, k*d, n)
    ckpt = (
        torch.empty(b, kd, n_chunks, n, dtype=acc, device=u.device)  # (b, k*d, chunks, n)
        if store_checkpoints
        else last_state  # not written
    )
    # One program per (channel block, route, batch); the sequence loop runs inside.
    grid = (triton.cdiv(d, blocks.block_d), k, b)
    _fwd_kernel[grid](
        u, delta, A, B, C,
        u if D is None else D,
        u if delta_bias is None else delta_bias,
        u if initial_state is None else initial_state,
        y, last_state, ckpt,
        d, l, n,
        BLOCK_D=blocks.block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_T=blocks.block_t,
        ACC=acc_dtype(u.dtype), DELTA_SOFTPLUS=delta_softplus,
        HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None,
        HAS_INITIAL_STATE=initial_state is not None, STORE_CKPT=store_checkpoints,
        num_warps=blocks.num_warps,
    )  # fmt: skip
    return y, last_state, (ckpt if store_checkpoints else None)


def selective_scan_bwd(
    dy: torch.Tensor,
    dlast: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
    *,
    ckpt: torch.Tensor | None = None,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Run `_bwd_kernel` on checked tensors, arguments in the order of the
    `vmamba::selective_scan_bwd` operator, and reduce its partial sums.

    `dy` (b, k*d, l) and `dlast` (b, k*d, n) are the gradients of y and of the last state (a
    None `dlast` counts as zeros). `ckpt` holds the chunk-start states from
    `selective_scan_fwd(..., store_checkpoints=True, blocks=blocks)`; None recomputes them with
    that forward first. Returns (gu, gdelta, gA, gB, gC, gD, gdelta_bias, ginitial_state), each
    in its input's dtype, None for absent inputs.
    """
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    d = kd // k
    blocks = blocks or scan_blocks(d, n, l)
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D_, delta_bias_, dlast = (contiguous_or_none(t) for t in (D, delta_bias, dlast))
    if ckpt is None:
        _, _, ckpt = selective_scan_fwd(
            u, delta, A, B, C, D_, delta_bias_, initial_state, delta_softplus,
            store_checkpoints=True, blocks=blocks,
        )  # fmt: skip
    acc = compute_dtype(u.dtype)
    n_blocks = triton.cdiv(d, blocks.block_d)
    gu = torch.empty_like(u)  # (b, k*d, l)
    gdelta = torch.empty_like(delta)  # (b, k*d, l)
    gA = torch.empty(b, kd, n, dtype=acc, device=u.device)  # (b, k*d, n) per batch
    gB = torch.empty(b, k, n_blocks, n, l, dtype=acc, device=u.device)  # per channel block
    gC = torch.empty(b, k, n_blocks, n, l, dtype=acc, device=u.device)  # per channel block
    gD = torch.empty(b, kd, dtype=acc, device=u.device) if D is not None else None  # (b, k*d)
    gdelta_bias = torch.empty(b, kd, dtype=acc, device=u.device) if delta_bias is not None else None
    has_initial_state = initial_state is not None
    ginitial_state = (
        torch.empty(b, kd, n, dtype=acc, device=u.device) if has_initial_state else None
    )
    # One program per (channel block, route, batch), as the forward; chunks run last to first.
    grid = (n_blocks, k, b)
    _bwd_kernel[grid](
        u, delta, A, B, C,
        u if D_ is None else D_,
        u if delta_bias_ is None else delta_bias_,
        ckpt, dy.contiguous(),
        u if dlast is None else dlast,
        gu, gdelta, gA, gB, gC,
        gA if gD is None else gD,
        gA if gdelta_bias is None else gdelta_bias,
        gA if ginitial_state is None else ginitial_state,
        d, l, n,
        BLOCK_D=blocks.block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_T=blocks.block_t,
        ACC=acc_dtype(u.dtype), DELTA_SOFTPLUS=delta_softplus,
        HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None,
        HAS_GLAST_STATE=dlast is not None, HAS_INITIAL_STATE=has_initial_state,
        num_warps=bwd_warps(blocks, n),
    )  # fmt: skip
    return (
        gu,
        gdelta,
        gA.sum(0).to(A.dtype),  # (b, k*d, n) -> (k*d, n)
        gB.sum(2).to(B.dtype),  # (b, k, n_blocks, n, l) -> (b, k, n, l)
        gC.sum(2).to(C.dtype),  # (b, k, n_blocks, n, l) -> (b, k, n, l)
        None if D is None else gD.sum(0).to(D.dtype),  # (b, k*d) -> (k*d,)
        None if delta_bias is None else gdelta_bias.sum(0).to(delta_bias.dtype),  # (k*d,)
        None if initial_state is None else ginitial_state.to(initial_state.dtype),
    )


def cuda_selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA kernel of the `vmamba::selective_scan_fwd` operator (vmamba_fast/ops.py), whose
    CPU kernel is Numba's: (y (b, k*d, l), last_state (b, k*d, n)) in the computation dtype.
    The one place the operator's arguments are checked."""
    fn = "vmamba::selective_scan_fwd"
    check_selective_scan_args(fn, u, delta, A, B, C, D, delta_bias, initial_state)
    check_device(fn, u)
    y, last_state, _ = selective_scan_fwd(
        u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
    )
    return y, last_state


def cuda_selective_scan_bwd(
    dy: torch.Tensor,
    dlast: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, ...]:
    """The CUDA kernel of the `vmamba::selective_scan_bwd` operator: (du, ddelta, dA, dB, dC, dD,
    ddelta_bias, dinitial_state), each in its input's dtype; for a D, delta_bias or initial
    state that is None, the gradient with respect to a zero one, in the computation dtype.

    The operator keeps only its inputs, so `selective_scan_bwd` recomputes the chunk-start
    states with a forward pass first.
    """
    fn = "vmamba::selective_scan_bwd"
    b, k, d, l, n = check_selective_scan_args(fn, u, delta, A, B, C, D, delta_bias, initial_state)
    check_device(fn, u)
    check_shape(fn, "dy", dy, (b, k * d, l), "b k*d l")
    if dlast is not None:
        check_shape(fn, "dlast", dlast, (b, k * d, n), "b k*d n")
    dtype = compute_dtype(u.dtype)
    D = torch.zeros(k * d, dtype=dtype, device=u.device) if D is None else D  # (k*d,)
    if delta_bias is None:
        delta_bias = torch.zeros(k * d, dtype=dtype, device=u.device)  # (k*d,)
    if initial_state is None:
        initial_state = torch.zeros(b, k * d, n, dtype=dtype, device=u.device)  # (b, k*d, n)
    return selective_scan_bwd(
        dy, dlast, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
    )


class SelectiveScanFn(torch.autograd.Function):
    """The Triton selective scan with its recomputing backward. Returns (y, last_state)."""

    @staticmethod
    def forward(
        ctx, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus, needs_grad, blocks
    ):
        y, last_state, ckpt = selective_scan_fwd(
            u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus,
            store_checkpoints=needs_grad, blocks=blocks,
        )  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, initial_state, ckpt)
        ctx.delta_softplus, ctx.blocks = delta_softplus, blocks
        return y, last_state

    @staticmethod
    def backward(ctx, gy, glast_state):
        u, delta, A, B, C, D, delta_bias, initial_state, ckpt = ctx.saved_tensors
        if gy is None:
            gy = torch.zeros(u.shape, dtype=compute_dtype(u.dtype), device=u.device)
        grads = selective_scan_bwd(
            gy, glast_state, u, delta, A, B, C, D, delta_bias, initial_state, ctx.delta_softplus,
            ckpt=ckpt, blocks=ctx.blocks,
        )  # fmt: skip
        return (*grads, None, None, None)


def selective_scan_blocked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    *,
    blocks: ScanBlocks | None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan` with an explicit tile, for tests and tuning.

    With `blocks=None` (the default tile) CUDA tensors go through the `vmamba::selective_scan_fwd`
    operator, whose CUDA kernel `cuda_selective_scan_fwd` checks the arguments; otherwise, and
    for CPU tensors in the interpreter (where the operator's CPU kernel is Numba's), they are
    checked here and run through `SelectiveScanFn`.
    """
    if isinstance(u, torch.Tensor) and u.device.type == "cuda" and blocks is None:
        from vmamba_fast import ops

        y, last_state = ops.selective_scan_fwd(
            u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
        )
    else:
        if not torch.compiler.is_compiling():
            check_selective_scan_args(
                "selective_scan", u, delta, A, B, C, D, delta_bias, initial_state
            )
            check_device("selective_scan", u)
        tensors = (u, delta, A, B, C, D, delta_bias, initial_state)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors
        )
        y, last_state = SelectiveScanFn.apply(*tensors, delta_softplus, needs_grad, blocks)
    return (y, last_state) if return_last_state else y


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    z: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`vmamba_ref.selective_scan` in Triton: same arguments, layouts, dtype rule and errors.

    Args:
        u: input sequences (b, k*d, l).
        delta: step-size logits (b, k*d, l), same dtype as u.
        A: state matrix diagonal (k*d, n).
        B, C: input and output projections (b, k, n, l), one per route; or mamba_ssm's constant
            (k*d, n) or variable (b, n, l), mapped onto that layout by the contract.
        D: skip weights (k*d,) or None.
        delta_bias: added to delta before softplus (k*d,) or None.
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: h_{-1} (b, k*d, n) or None for zeros.
        return_last_state: also return h_{l-1} (b, k*d, n).
        z: the gate (b, k*d, l) or None: the output is then y * silu(z), applied in torch.

    Returns:
        y (b, k*d, l) in float32 (float64 for float64 u); with `return_last_state`, (y, last_state).
        An empty u gives the contract's `empty_scan` result.

    Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was
    imported; differentiable in every tensor argument.
    """
    if not is_kernel_call(u, B, C, z):
        return scan_any_layout(
            selective_scan, u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state,
            return_last_state, z,
        )  # fmt: skip
    return selective_scan_blocked(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, return_last_state,
        blocks=None,
    )  # fmt: skip
