"""Triton selective scan (S6), forward and backward: one program per (batch, route, channel block).

Mamba (Gu & Dao 2023) section 3.2 and algorithm 2; VMamba section 3.2. For channel c of route
k, state index n and step t (the math of `vmamba_ref.selective_scan`):

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

The forward saves only the state at each chunk start, (b, k*d, cdiv(l, BLOCK_T), n): 1/BLOCK_T of
the full states. (Through the `vmamba::selective_scan_bwd` operator, which keeps only the
inputs, a forward pass recomputes them first.) The backward walks the chunks last to first; in each it rescans the states from
the saved one, then scans the adjoint over the same chunk with its inputs loaded in reverse time
order, so the adjoint is again a forward scan, and flips the result to line it up with the
states. `dA_t h_{t-1}` is `h_t - dBu_t`, which needs no shifted copy of the states.

Reductions: A, D and delta_bias are shared across the batch, B and C across a route's d
channels. Each program writes its own partial sums, (b, k*d, n) for A, (b, k*d) for D and
delta_bias, (b, k, cdiv(d, BLOCK_D), n, l) for B and C, and PyTorch sums them: deterministic,
and no atomics. With `ROUTE_ORDER` (the fused SS2D core, `vmamba_fast.triton.ss2d_core`) the
same kernels read and write the grid in route order and the four routes add their outputs into
one map with atomic adds.

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

from vmamba_fast.triton.cross_scan import acc_dtype, check_device, route_position
from vmamba_ref.contract import check_selective_scan_args, check_shape, compute_dtype


@triton.jit
def _combine(a_l, b_l, a_r, b_r):
    """Compose two steps of h -> a h + b, left first: h -> a_r (a_l h + b_l) + b_r."""
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _load_tile(p, r, o_p, l, m, ACC: tl.constexpr):
    """Tile p[r, o_p] of a row-major (rows, l) tensor, as ACC, 0 outside the mask m."""
    return tl.load(p + r[:, None] * l + o_p[None, :], mask=m, other=0.0).to(ACC)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)), and x above 20 like torch's softplus.

    log1p(e) by Kahan's trick, log(1 + e) * e / ((1 + e) - 1), exact to rounding also where
    1 + e rounds to 1 (e below one ulp of 1), where log(1 + e) alone would return 0.
    """
    e = tl.exp(tl.minimum(x, 20.0))
    one_e = 1.0 + e
    rounded_away = one_e == 1.0
    log1p_e = tl.where(
        rounded_away, e, tl.log(one_e) * (e / tl.where(rounded_away, 1.0, one_e - 1.0))
    )
    return tl.where(x > 20.0, x, log1p_e)


@triton.jit
def _softplus_grad(x):
    """d softplus / dx: sigmoid(x), computed without overflow; 1 above the threshold of 20."""
    e = tl.exp(-tl.abs(x))
    sigmoid = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return tl.where(x > 20.0, 1.0, sigmoid)


@triton.jit
def _step_size(
    b_delta, b_delta_bias, m_dt, DELTA_SOFTPLUS: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr
):
    """dt = softplus(delta + delta_bias) on a (BLOCK_D, BLOCK_T) tile, 0 outside the mask, so
    that padded steps leave the state alone (dA = 1, dBu = 0). Returns (dt, delta + bias)."""
    b_z = b_delta
    if HAS_DELTA_BIAS:
        b_z = b_z + b_delta_bias[:, None]
    b_dt = b_z
    if DELTA_SOFTPLUS:
        b_dt = _softplus(b_z)
    return tl.where(m_dt, b_dt, 0.0), b_z


@triton.jit
def _fwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_delta_bias, p_h0,
    p_y, p_h_last, p_ckpt,
    d, l, n, h, w,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
    ROUTE_ORDER: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr,
):  # fmt: skip
    """Forward scan of channels [i_d*BLOCK_D, +BLOCK_D) of route i_k in batch i_b.

    Grid (cdiv(d, BLOCK_D), k, b); program (i_d, i_k, i_b). Channel c of route i_k is row
    i_k*d + c of the (k*d)-sized tensors. All pointers are contiguous:

        p_u          u      (b, k*d, l)  strides (k*d*l, l, 1); with ROUTE_ORDER x (b, d, l),
                                          strides (d*l, l, 1), shared by the k routes
        p_delta      delta  (b, k*d, l)  strides (k*d*l, l, 1)
        p_A          A      (k*d, n)     strides (n, 1)
        p_B, p_C     B, C   (b, k, n, l) strides (k*n*l, n*l, l, 1)
        p_D          D      (k*d,)       stride 1, read if HAS_D
        p_delta_bias        (k*d,)       stride 1, read if HAS_DELTA_BIAS
        p_h0         h_{-1} (b, k*d, n)  strides (k*d*n, n, 1), read if HAS_H0
        p_y          y      like p_u, in ACC; without ROUTE_ORDER stored, with ROUTE_ORDER
                                          atomically added (the caller zeroes it), so that the
                                          four routes sum into one map
        p_h_last     h_{l-1} (b, k*d, n) strides (k*d*n, n, 1), ACC
        p_ckpt       state at the start of each chunk (b, k*d, cdiv(l, BLOCK_T), n),
                     strides (k*d*cdiv(l, BLOCK_T)*n, cdiv(l, BLOCK_T)*n, n, 1), ACC; written
                     if STORE_CKPT, for the backward

    Without ROUTE_ORDER step t of a sequence is at column t. With ROUTE_ORDER the last axis of
    u, delta, B, C and y is the (h, w) grid flattened row-major and step t of route i_k is at
    column `route_position(t, i_k, h, w, l)`.
    """
    i_d, i_k, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    k = tl.num_programs(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the route
    o_n = tl.arange(0, BLOCK_N)
    o_j = tl.arange(0, BLOCK_T)  # step within a chunk
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_c = i_k * d + o_d  # channels within k*d
    r_kd = i_b * k * d + o_c  # rows of (b, k*d, .) tensors
    if ROUTE_ORDER:
        r_u = i_b * d + o_d  # rows of x and y, (b, d, l)
    else:
        r_u = r_kd
    r_bc = (i_b * k + i_k) * n + o_n  # rows of B, C viewed as (b*k*n, l)
    n_chunks = tl.cdiv(l, BLOCK_T)

    b_A = tl.load(p_A + o_c[:, None] * n + o_n[None, :], mask=m_dn, other=0.0).to(ACC)  # (BD, BN)
    b_D = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_D:
        b_D = tl.load(p_D + o_c, mask=m_d, other=0.0).to(ACC)  # (BD,)
    b_delta_bias = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_DELTA_BIAS:
        b_delta_bias = tl.load(p_delta_bias + o_c, mask=m_d, other=0.0).to(ACC)  # (BD,)
    b_h = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # the state carried across chunks
    if HAS_H0:
        b_h = tl.load(p_h0 + r_kd[:, None] * n + o_n[None, :], mask=m_dn, other=0.0).to(ACC)

    for i_t in range(0, n_chunks):
        if STORE_CKPT:
            p_ckpt_t = p_ckpt + (r_kd[:, None] * n_chunks + i_t) * n + o_n[None, :]
            tl.store(p_ckpt_t, b_h, mask=m_dn)
        o_t = i_t * BLOCK_T + o_j
        m_t = o_t < l
        if ROUTE_ORDER:
            o_p = route_position(o_t, i_k, h, w, l)  # grid column of each step
        else:
            o_p = o_t
        m_dt = m_d[:, None] & m_t[None, :]
        m_nt = m_n[:, None] & m_t[None, :]
        b_u = _load_tile(p_u, r_u, o_p, l, m_dt, ACC)  # (BD, BT)
        b_delta = _load_tile(p_delta, r_kd, o_p, l, m_dt, ACC)
        b_B = _load_tile(p_B, r_bc, o_p, l, m_nt, ACC)  # (BN, BT)
        b_C = _load_tile(p_C, r_bc, o_p, l, m_nt, ACC)  # (BN, BT)
        b_dt, _ = _step_size(b_delta, b_delta_bias, m_dt, DELTA_SOFTPLUS, HAS_DELTA_BIAS)

        b_dA = tl.exp(b_dt[:, None, :] * b_A[:, :, None])  # (BD, BN, BT)
        b_dBu = (b_dt * b_u)[:, None, :] * b_B[None, :, :]  # (BD, BN, BT)
        # The carried state enters at the chunk's first step: h_first = dA h_carry + dBu.
        b_in = b_dBu + tl.where(o_j[None, None, :] == 0, b_dA * b_h[:, :, None], 0.0)
        _, b_hs = tl.associative_scan((b_dA, b_in), axis=2, combine_fn=_combine)  # (BD, BN, BT)
        b_h = tl.sum(tl.where(o_j[None, None, :] == BLOCK_T - 1, b_hs, 0.0), axis=2)  # (BD, BN)

        b_y = tl.sum(b_hs * b_C[None, :, :], axis=1) + b_D[:, None] * b_u  # (BD, BT)
        p_y_t = p_y + r_u[:, None] * l + o_p[None, :]
        if ROUTE_ORDER:
            tl.atomic_add(p_y_t, b_y, mask=m_dt)
        else:
            tl.store(p_y_t, b_y, mask=m_dt)
    tl.store(p_h_last + r_kd[:, None] * n + o_n[None, :], b_h, mask=m_dn)


@triton.jit
def _bwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_delta_bias, p_ckpt, p_gy, p_gh_last,
    p_gu, p_gdelta, p_gA, p_gB, p_gC, p_gD, p_gdelta_bias, p_gh0,
    d, l, n, h, w,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr,
    ROUTE_ORDER: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, HAS_GH_LAST: tl.constexpr, HAS_H0: tl.constexpr,
):  # fmt: skip
    """Backward of channels [i_d*BLOCK_D, +BLOCK_D) of route i_k in batch i_b, chunks last first.

    Grid (cdiv(d, BLOCK_D), k, b) as the forward; n_blocks = cdiv(d, BLOCK_D). Pointers are
    contiguous; p_u, p_delta, p_A, p_B, p_C, p_D, p_delta_bias and p_ckpt as in `_fwd_kernel`.

        p_gy           gradient of y, like p_y (any float dtype)
        p_gh_last      gradient of h_{l-1} (b, k*d, n), strides (k*d*n, n, 1), if HAS_GH_LAST
        p_gu           gradient of u, like p_u: stored, or atomically added with ROUTE_ORDER
                       (the caller zeroes it; the k routes share x)
        p_gdelta       (b, k*d, l), strides (k*d*l, l, 1), stored in its element type
        p_gA           per-batch partial sums (b, k*d, n), strides (k*d*n, n, 1), ACC
        p_gB, p_gC     per-channel-block partial sums (b, k, n_blocks, n, l), strides
                       (k*n_blocks*n*l, n_blocks*n*l, n*l, l, 1), ACC
        p_gD, p_gdelta_bias  per-batch partial sums (b, k*d), strides (k*d, 1), ACC, written
                       if HAS_D / HAS_DELTA_BIAS
        p_gh0          gradient of h_{-1} (b, k*d, n), strides (k*d*n, n, 1), ACC, if HAS_H0

    Grid columns of steps follow `_fwd_kernel` (route_position with ROUTE_ORDER).
    """
    i_d, i_k, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n_blocks, k = tl.num_programs(0), tl.num_programs(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the route
    o_n = tl.arange(0, BLOCK_N)
    o_j = tl.arange(0, BLOCK_T)  # step within a chunk
    m_d, m_n = o_d < d, o_n < n
    m_dn = m_d[:, None] & m_n[None, :]
    o_c = i_k * d + o_d  # channels within k*d
    r_kd = i_b * k * d + o_c  # rows of (b, k*d, .) tensors
    if ROUTE_ORDER:
        r_u = i_b * d + o_d  # rows of x, gy and gx, (b, d, l)
    else:
        r_u = r_kd
    r_bc = (i_b * k + i_k) * n + o_n  # rows of B, C viewed as (b*k*n, l)
    r_part = ((i_b * k + i_k) * n_blocks + i_d) * n + o_n  # rows of gB, gC partials
    n_chunks = tl.cdiv(l, BLOCK_T)

    b_A = tl.load(p_A + o_c[:, None] * n + o_n[None, :], mask=m_dn, other=0.0).to(ACC)  # (BD, BN)
    b_D = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_D:
        b_D = tl.load(p_D + o_c, mask=m_d, other=0.0).to(ACC)  # (BD,)
    b_delta_bias = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_DELTA_BIAS:
        b_delta_bias = tl.load(p_delta_bias + o_c, mask=m_d, other=0.0).to(ACC)  # (BD,)
    # Adjoint carried backwards across chunks: g at the first step after the current chunk,
    # which for the last chunk is the last state's own gradient.
    b_g = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    if HAS_GH_LAST:
        b_g = tl.load(p_gh_last + r_kd[:, None] * n + o_n[None, :], mask=m_dn, other=0.0).to(ACC)
    b_gA = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    b_gh0 = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    b_gD = tl.zeros((BLOCK_D,), dtype=ACC)
    b_gdelta_bias = tl.zeros((BLOCK_D,), dtype=ACC)

    for i_c in range(0, n_chunks):
        i_t = n_chunks - 1 - i_c
        # Steps of the chunk in time order (o_t) and in reverse time order (o_s).
        o_t = i_t * BLOCK_T + o_j
        o_s = i_t * BLOCK_T + (BLOCK_T - 1) - o_j
        if ROUTE_ORDER:
            o_p = route_position(o_t, i_k, h, w, l)
            o_ps = route_position(o_s, i_k, h, w, l)
            o_ps1 = route_position(o_s + 1, i_k, h, w, l)
        else:
            o_p, o_ps, o_ps1 = o_t, o_s, o_s + 1
        m_dt = m_d[:, None] & (o_t < l)[None, :]
        m_nt = m_n[:, None] & (o_t < l)[None, :]

        # Rescan the chunk's states from the one saved at its start.
        b_h = tl.load(
            p_ckpt + (r_kd[:, None] * n_chunks + i_t) * n + o_n[None, :], mask=m_dn, other=0.0
        )
        b_u = _load_tile(p_u, r_u, o_p, l, m_dt, ACC)  # (BD, BT)
        b_delta = _load_tile(p_delta, r_kd, o_p, l, m_dt, ACC)
        b_B = _load_tile(p_B, r_bc, o_p, l, m_nt, ACC)  # (BN, BT)
        b_gy = _load_tile(p_gy, r_u, o_p, l, m_dt, ACC)  # (BD, BT)
        b_dt, b_z = _step_size(b_delta, b_delta_bias, m_dt, DELTA_SOFTPLUS, HAS_DELTA_BIAS)
        b_dA = tl.exp(b_dt[:, None, :] * b_A[:, :, None])  # (BD, BN, BT)
        b_dBu = (b_dt * b_u)[:, None, :] * b_B[None, :, :]  # (BD, BN, BT)
        b_in = b_dBu + tl.where(o_j[None, None, :] == 0, b_dA * b_h[:, :, None], 0.0)
        _, b_hs = tl.associative_scan((b_dA, b_in), axis=2, combine_fn=_combine)  # (BD, BN, BT)

        # The adjoint, on tiles in reverse time order: g_s = dA_{s+1} g_{s+1} + C_s gy_s.
        m_ds = m_d[:, None] & (o_s < l)[None, :]
        m_ds1 = m_d[:, None] & (o_s + 1 < l)[None, :]
        m_ns = m_n[:, None] & (o_s < l)[None, :]
        b_delta1 = _load_tile(p_delta, r_kd, o_ps1, l, m_ds1, ACC)
        b_dt1, _ = _step_size(b_delta1, b_delta_bias, m_ds1, DELTA_SOFTPLUS, HAS_DELTA_BIAS)
        b_dA1 = tl.exp(b_dt1[:, None, :] * b_A[:, :, None])  # dA_{s+1}, 1 past the end (BD, BN, BT)
        b_Cs = _load_tile(p_C, r_bc, o_ps, l, m_ns, ACC)  # (BN, BT)
        b_gys = _load_tile(p_gy, r_u, o_ps, l, m_ds, ACC)  # (BD, BT)
        b_gin = b_Cs[None, :, :] * b_gys[:, None, :]  # (BD, BN, BT)
        # The adjoint from the later chunk enters at this chunk's last step.
        b_gin += tl.where(o_j[None, None, :] == 0, b_dA1 * b_g[:, :, None], 0.0)
        _, b_grev = tl.associative_scan((b_dA1, b_gin), axis=2, combine_fn=_combine)  # (BD, BN, BT)
        b_g = tl.sum(tl.where(o_j[None, None, :] == BLOCK_T - 1, b_grev, 0.0), axis=2)  # (BD, BN)
        b_gs = tl.flip(b_grev, 2)  # (BD, BN, BT), time order, lined up with b_hs

        b_dAh = b_hs - b_dBu  # dA_t h_{t-1} (BD, BN, BT)
        b_gA += tl.sum(b_gs * b_dAh * b_dt[:, None, :], axis=2)  # (BD, BN)
        b_gdt = tl.sum(b_gs * (b_dAh * b_A[:, :, None] + b_B[None, :, :] * b_u[:, None, :]), axis=1)
        b_gu = tl.sum(b_gs * b_B[None, :, :], axis=1) * b_dt + b_D[:, None] * b_gy  # (BD, BT)
        if HAS_D:
            b_gD += tl.sum(b_gy * b_u, axis=1)  # (BD,)
        if DELTA_SOFTPLUS:
            b_gdt = b_gdt * _softplus_grad(b_z)
        b_gdt = tl.where(m_dt, b_gdt, 0.0)  # (BD, BT) gradient of delta
        if HAS_DELTA_BIAS:
            b_gdelta_bias += tl.sum(b_gdt, axis=1)  # (BD,)
        if HAS_H0:
            b_gh0 = tl.sum(tl.where(o_j[None, None, :] == 0, b_dA * b_gs, 0.0), axis=2)  # (BD, BN)

        p_gdelta_t = p_gdelta + r_kd[:, None] * l + o_p[None, :]
        tl.store(p_gdelta_t, b_gdt.to(p_gdelta.dtype.element_ty), mask=m_dt)
        p_gu_t = p_gu + r_u[:, None] * l + o_p[None, :]
        if ROUTE_ORDER:
            tl.atomic_add(p_gu_t, b_gu, mask=m_dt)
        else:
            tl.store(p_gu_t, b_gu.to(p_gu.dtype.element_ty), mask=m_dt)
        b_gB = tl.sum(b_gs * (b_dt * b_u)[:, None, :], axis=0)  # (BN, BT)
        b_gC = tl.sum(b_hs * b_gy[:, None, :], axis=0)  # (BN, BT)
        tl.store(p_gB + r_part[:, None] * l + o_p[None, :], b_gB, mask=m_nt)
        tl.store(p_gC + r_part[:, None] * l + o_p[None, :], b_gC, mask=m_nt)

    tl.store(p_gA + r_kd[:, None] * n + o_n[None, :], b_gA, mask=m_dn)
    if HAS_D:
        tl.store(p_gD + r_kd, b_gD, mask=m_d)
    if HAS_DELTA_BIAS:
        tl.store(p_gdelta_bias + r_kd, b_gdelta_bias, mask=m_d)
    if HAS_H0:
        tl.store(p_gh0 + r_kd[:, None] * n + o_n[None, :], b_gh0, mask=m_dn)


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


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def launch_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    y: torch.Tensor,
    *,
    d: int,
    grid_hw: tuple[int, int] | None,
    delta_softplus: bool,
    store_checkpoints: bool,
    blocks: ScanBlocks,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `_fwd_kernel` into `y`; return (h_last (b, k*d, n), chunk-start states or None).

    Without `grid_hw` the layouts are the selective scan's; with `grid_hw = (h, w)` they are the
    SS2D core's (u is x (b, d, l), y (b, d, l) zeroed by the caller) and steps are read in route
    order. Inputs must be contiguous.
    """
    b, k, n, l = B.shape
    acc = compute_dtype(u.dtype)
    n_chunks = triton.cdiv(l, blocks.block_t)
    h_last = torch.empty(b, k * d, n, dtype=acc, device=u.device)  # (b, k*d, n)
    ckpt = (
        torch.empty(b, k * d, n_chunks, n, dtype=acc, device=u.device)  # (b, k*d, chunks, n)
        if store_checkpoints
        else h_last  # not written
    )
    h, w = grid_hw if grid_hw is not None else (1, l)
    # One program per (channel block, route, batch); the sequence loop runs inside.
    grid = (triton.cdiv(d, blocks.block_d), k, b)
    _fwd_kernel[grid](
        u, delta, A, B, C,
        u if D is None else D,
        u if delta_bias is None else delta_bias,
        u if initial_state is None else initial_state,
        y, h_last, ckpt,
        d, l, n, h, w,
        BLOCK_D=blocks.block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_T=blocks.block_t,
        ACC=acc_dtype(u.dtype), ROUTE_ORDER=grid_hw is not None, DELTA_SOFTPLUS=delta_softplus,
        HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None,
        HAS_H0=initial_state is not None, STORE_CKPT=store_checkpoints,
        num_warps=blocks.num_warps,
    )  # fmt: skip
    return h_last, (ckpt if store_checkpoints else None)


def launch_bwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    ckpt: torch.Tensor,
    gy: torch.Tensor,
    gh_last: torch.Tensor | None,
    gu: torch.Tensor,
    *,
    d: int,
    grid_hw: tuple[int, int] | None,
    delta_softplus: bool,
    has_initial_state: bool,
    blocks: ScanBlocks,
) -> tuple[torch.Tensor, ...]:
    """Run `_bwd_kernel`, writing the gradient of u into `gu`, and reduce the partial sums.

    Returns (gdelta like delta, gA (k*d, n), gB, gC (b, k, n, l), gD (k*d,) or None,
    gdelta_bias (k*d,) or None, g_initial_state (b, k*d, n) or None), the reductions in the
    computation dtype. Layouts as in `launch_fwd`; inputs must be contiguous.
    """
    b, k, n, l = B.shape
    acc = compute_dtype(u.dtype)
    n_blocks = triton.cdiv(d, blocks.block_d)
    gdelta = torch.empty_like(delta)  # like delta
    gA = torch.empty(b, k * d, n, dtype=acc, device=u.device)  # (b, k*d, n) per batch
    gB = torch.empty(b, k, n_blocks, n, l, dtype=acc, device=u.device)  # per channel block
    gC = torch.empty(b, k, n_blocks, n, l, dtype=acc, device=u.device)  # per channel block
    gD = torch.empty(b, k * d, dtype=acc, device=u.device) if D is not None else None  # (b, k*d)
    gdelta_bias = (
        torch.empty(b, k * d, dtype=acc, device=u.device) if delta_bias is not None else None
    )
    gh0 = torch.empty(b, k * d, n, dtype=acc, device=u.device) if has_initial_state else None
    h, w = grid_hw if grid_hw is not None else (1, l)
    # One program per (channel block, route, batch), as the forward; chunks run last to first.
    grid = (n_blocks, k, b)
    _bwd_kernel[grid](
        u, delta, A, B, C,
        u if D is None else D,
        u if delta_bias is None else delta_bias,
        ckpt, gy,
        u if gh_last is None else gh_last,
        gu, gdelta, gA, gB, gC,
        gA if gD is None else gD,
        gA if gdelta_bias is None else gdelta_bias,
        gA if gh0 is None else gh0,
        d, l, n, h, w,
        BLOCK_D=blocks.block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_T=blocks.block_t,
        ACC=acc_dtype(u.dtype), ROUTE_ORDER=grid_hw is not None, DELTA_SOFTPLUS=delta_softplus,
        HAS_D=D is not None, HAS_DELTA_BIAS=delta_bias is not None,
        HAS_GH_LAST=gh_last is not None, HAS_H0=has_initial_state,
        num_warps=bwd_warps(blocks, n),
    )  # fmt: skip
    return (
        gdelta,
        gA.sum(0),  # (k*d, n)
        gB.sum(2),  # (b, k, n, l)
        gC.sum(2),  # (b, k, n, l)
        None if gD is None else gD.sum(0),  # (k*d,)
        None if gdelta_bias is None else gdelta_bias.sum(0),  # (k*d,)
        gh0,
    )


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
    store_checkpoints: bool,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward launcher on checked tensors: (y (b, k*d, l), h_last (b, k*d, n), chunk-start
    states or None), in the computation dtype."""
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    d = kd // k
    blocks = blocks or scan_blocks(d, n, l, inference=not store_checkpoints)
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D, delta_bias, initial_state = (_contiguous(t) for t in (D, delta_bias, initial_state))
    y = torch.empty(b, kd, l, dtype=compute_dtype(u.dtype), device=u.device)  # (b, k*d, l)
    h_last, ckpt = launch_fwd(
        u, delta, A, B, C, D, delta_bias, initial_state, y,
        d=d, grid_hw=None, delta_softplus=delta_softplus, store_checkpoints=store_checkpoints,
        blocks=blocks,
    )  # fmt: skip
    return y, h_last, ckpt


def selective_scan_bwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
    ckpt: torch.Tensor,
    gy: torch.Tensor,
    gh_last: torch.Tensor | None,
    blocks: ScanBlocks | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """Backward launcher: (gu, gdelta, gA, gB, gC, gD, gdelta_bias, g_initial_state), each in
    its input's dtype (None for absent inputs). `ckpt` from `selective_scan_fwd` with the same
    `blocks`; a None `gh_last` counts as zeros."""
    b, kd, l = u.shape
    k, n = B.shape[1], B.shape[2]
    d = kd // k
    blocks = blocks or scan_blocks(d, n, l)
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D_, delta_bias_, gh_last = (_contiguous(t) for t in (D, delta_bias, gh_last))
    gu = torch.empty_like(u)  # (b, k*d, l)
    gdelta, gA, gB, gC, gD, gdelta_bias, gh0 = launch_bwd(
        u, delta, A, B, C, D_, delta_bias_, ckpt, gy.contiguous(), gh_last, gu,
        d=d, grid_hw=None, delta_softplus=delta_softplus,
        has_initial_state=initial_state is not None, blocks=blocks,
    )  # fmt: skip
    return (
        gu,
        gdelta,
        gA.to(A.dtype),
        gB.to(B.dtype),
        gC.to(C.dtype),
        None if D is None else gD.to(D.dtype),
        None if delta_bias is None else gdelta_bias.to(delta_bias.dtype),
        None if initial_state is None else gh0.to(initial_state.dtype),
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
    CPU kernel is Numba's: (y (b, k*d, l), h_last (b, k*d, n)) in the computation dtype."""
    fn = "vmamba::selective_scan_fwd"
    check_selective_scan_args(fn, u, delta, A, B, C, D, delta_bias, initial_state)
    check_device(fn, u)
    y, h_last, _ = selective_scan_fwd(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, False
    )
    return y, h_last


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

    The operator keeps only its inputs, so the chunk-start states are recomputed by a forward
    pass first; the backward then runs as `selective_scan_bwd`.
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
    blocks = scan_blocks(d, n, l)
    _, _, ckpt = selective_scan_fwd(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, True, blocks
    )
    return selective_scan_bwd(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, ckpt, dy, dlast, blocks
    )


class SelectiveScanFn(torch.autograd.Function):
    """The Triton selective scan with its recomputing backward. Returns (y, h_last)."""

    @staticmethod
    def forward(
        ctx, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus, needs_grad, blocks
    ):
        y, h_last, ckpt = selective_scan_fwd(
            u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, needs_grad, blocks
        )
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, initial_state, ckpt)
        ctx.delta_softplus, ctx.blocks = delta_softplus, blocks
        return y, h_last

    @staticmethod
    def backward(ctx, gy, gh_last):
        u, delta, A, B, C, D, delta_bias, initial_state, ckpt = ctx.saved_tensors
        if gy is None:
            gy = torch.zeros(u.shape, dtype=compute_dtype(u.dtype), device=u.device)
        grads = selective_scan_bwd(
            u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, initial_state, ckpt, gy,
            gh_last, ctx.blocks,
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
    operator, whose CUDA kernel is `cuda_selective_scan_fwd`; otherwise, and for CPU tensors in
    the interpreter (where the operator's CPU kernel is Numba's), through `SelectiveScanFn`.
    """
    if not torch.compiler.is_compiling():
        check_selective_scan_args("selective_scan", u, delta, A, B, C, D, delta_bias, initial_state)
        check_device("selective_scan", u)
    if u.device.type == "cuda" and blocks is None:
        from vmamba_fast import ops

        y, h_last = ops.selective_scan_fwd(
            u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
        )
    else:
        tensors = (u, delta, A, B, C, D, delta_bias, initial_state)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors
        )
        y, h_last = SelectiveScanFn.apply(*tensors, delta_softplus, needs_grad, blocks)
    return (y, h_last) if return_last_state else y


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`vmamba_ref.selective_scan` in Triton: same arguments, layouts, dtype rule and errors.

    Args:
        u: input sequences (b, k*d, l).
        delta: step-size logits (b, k*d, l), same dtype as u.
        A: state matrix diagonal (k*d, n).
        B, C: input and output projections (b, k, n, l), one per route.
        D: skip weights (k*d,) or None.
        delta_bias: added to delta before softplus (k*d,) or None.
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: h_{-1} (b, k*d, n) or None for zeros.
        return_last_state: also return h_{l-1} (b, k*d, n).

    Returns:
        y (b, k*d, l) in float32 (float64 for float64 u); with `return_last_state`, (y, h_last).

    Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before triton was
    imported; differentiable in every tensor argument.
    """
    return selective_scan_blocked(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, return_last_state,
        blocks=None,
    )  # fmt: skip
