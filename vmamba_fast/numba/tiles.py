"""The tile routines of the S6 recurrence, shared by the selective scan (`selective_scan.py`) and
the fused SS2D core (`ss2d_core.py`).

A tile is one channel block (cb channels with n states each: R = cb*n recurrence chains) over
tl steps of one route. The launchers of both operators walk their work items tile by tile and
differ only in where a tile's rows come from; each tile runs the three phases of the forward
(equation numbers as in `selective_scan.py`, after Mamba section 3.2, algorithm 2)

    phase 1, `discretize`  (1a, 1b) softplus and exp along time, one vector lane per step
    phase 2, `recurrence`  (2) the only sequential part: R chains advanced four at a time
    phase 3, `readout`     (3) along time again, SIMD

and, in the backward, a forward sweep that keeps every tile's discretization and states
(`sweep_tile`), then the adjoint recurrence (4) and the gradients of the tile (`tile_bwd`).

Phases 1 and 3 read and write rows of 2-D C-contiguous arrays given as (array, first row, first
column): the caller's tensors when a route runs along memory, or contiguous scratch that the
caller filled (`load_rows`) when it does not (the column-major routes of the fused core). Every
loop is unit-stride, so LLVM vectorizes all of them except the recurrences, which are sequential
by nature. The fused core's routes 1 and 3 keep their tiles in row-major grid order on a
whole grid and walk them column by column in the recurrences only (`column_recurrence`,
`column_adjoint`; `sweep_tile` and `tile_bwd` take the grid's width for that). Scratch comes
from one per-call `workspace`, one row per thread, carved into the layouts of `fwd_scratch`
and `bwd_scratch`.

In the paper's equations h_t is the SSM state; in code it is `state` (one value per chain) and
`states` (R, T) (one per chain and step), since `h` is the grid height.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit

from vmamba_fast.numba.config import JIT, active, wide_simd
from vmamba_fast.numba.memory import ROW_PAD, stream_row, take, take3
from vmamba_fast.numba.numerics import (
    exp_,
    exp_nonpositive_,
    softplus_,
    softplus_sigmoid_,
    zero_of,
)

# ------------------------------------------------------------------------------------------------
# Sizes: how a work item is cut into channel blocks and time tiles.
# ------------------------------------------------------------------------------------------------


def time_tile(l: int) -> int:
    """Steps per tile: the configured tile, or the whole sequence when it is shorter."""
    return max(1, min(active().time_tile, l))


def channel_block(n: int) -> int:
    """Channels per block: enough that cb*n >= config.chains recurrences run side by side."""
    return max(1, active().chains // n)


# ------------------------------------------------------------------------------------------------
# Scratch: the layouts of a tile's buffers in one thread's workspace row.
# ------------------------------------------------------------------------------------------------


@njit(**JIT)
def fwd_scratch(ws, cb, n, T):
    """Scratch of a forward tile, carved from ws (rows of T + ROW_PAD):
    ub, xb, yb (cb, T): u, delta, y of routes read through a copy;  Bb, Cb (n, T): B, C
    likewise;  dtb (cb, T): dt;  dAb, dBub, states (cb*n, T): row j*n+m holds dA, dBu and h_t of
    chain (j, m);  state (cb*n,): the carried state."""
    ub, o = take(ws, 0, cb, T)
    xb, o = take(ws, o, cb, T)
    yb, o = take(ws, o, cb, T)
    Bb, o = take(ws, o, n, T)
    Cb, o = take(ws, o, n, T)
    dtb, o = take(ws, o, cb, T)
    dAb, o = take(ws, o, cb * n, T)
    dBub, o = take(ws, o, cb * n, T)
    states, o = take(ws, o, cb * n, T)
    state, o = take(ws, o, 1, cb * n)
    return (ub, xb, yb, Bb, Cb, dtb, dAb, dBub, states), state[0, : cb * n]


@njit(**JIT)
def bwd_scratch(ws, cb, n, T, ntiles):
    """Scratch of a backward pass over ntiles tiles, carved from ws (rows of T + ROW_PAD):

    - the tile's inputs, copied: ub, xb, dyb (cb, T): u, delta, dy; Bb, Cb (n, T): B, C;
    - its temporaries: G (cb*n, T): the adjoint states g; gu, gdt (cb, T): du, ddelta;
      dBb, dCb (n, T): dB, dC summed over the block;
    - what the forward sweep keeps for every tile, so that the backward recomputes nothing:
      dts, sgs (ntiles, cb, T): dt and sigmoid(delta + bias); dAs, dBus, prev_states
      (ntiles, cb*n, T): dA, dBu and the state before each step, h_{t-1};
    - state, q (cb*n,): the carried state and adjoint.

    Memory: about (2*cb + 3*cb*n) * l numbers per thread, O(threads * chains * l), never a
    (b, k*d, l, n) tensor."""
    ub, o = take(ws, 0, cb, T)
    xb, o = take(ws, o, cb, T)
    dyb, o = take(ws, o, cb, T)
    Bb, o = take(ws, o, n, T)
    Cb, o = take(ws, o, n, T)
    G, o = take(ws, o, cb * n, T)
    gu, o = take(ws, o, cb, T)
    gdt, o = take(ws, o, cb, T)
    dBb, o = take(ws, o, n, T)
    dCb, o = take(ws, o, n, T)
    dts, o = take3(ws, o, ntiles, cb, T)
    sgs, o = take3(ws, o, ntiles, cb, T)
    dAs, o = take3(ws, o, ntiles, cb * n, T)
    dBus, o = take3(ws, o, ntiles, cb * n, T)
    prev_states, o = take3(ws, o, ntiles, cb * n, T)
    state, o = take(ws, o, 1, cb * n)
    q, o = take(ws, o, 1, cb * n)
    inputs = (ub, xb, dyb, Bb, Cb)
    temps = (G, gu, gdt, dBb, dCb)
    kept = (dts, sgs, dAs, dBus, prev_states)
    return inputs, temps, kept, state[0, : cb * n], q[0, : cb * n]


def workspace(
    cb: int, n: int, T: int, dtype: torch.dtype, backward_tiles: int | None = None, extra: int = 0
) -> np.ndarray:
    """Scratch for every thread: (threads, S), S the size of `fwd_scratch` or, given
    backward_tiles, of `bwd_scratch` over that many tiles, for blocks of up to cb channels, plus
    `extra` numbers that the caller carves before the tile's scratch (the fused core's maps).

    Kernels take their thread's row (`numba.get_thread_id()`), so they allocate nothing: Numba's
    allocation functions would have to compile while the test suite replaces `numpy.empty` by a
    NaN-filling wrapper, which fails; and one allocation per call is cheaper than one per work
    item. Fresh per call, so that calls from several Python threads (the kernels release the
    GIL) do not share it.
    """
    pad, cbn = ROW_PAD, cb * n
    if backward_tiles is None:
        size = (4 * cb + 2 * n + 3 * cbn) * (T + pad) + (cbn + pad)
    else:
        rows = 5 * cb + 4 * n + cbn + backward_tiles * (2 * cb + 3 * cbn)
        size = rows * (T + pad) + 2 * (cbn + pad)
    size += extra
    return torch.empty(numba.config.NUMBA_NUM_THREADS, size, dtype=dtype).numpy()


@njit(**JIT)
def wide_(x):
    """x as float64: the carried state and adjoint of a recurrence, and every sum over time of the
    backward, accumulate in float64 so that their rounding error does not grow with l (the
    float32 loop's relative error, about l * 6e-8 in the worst case, is 1e-3 at l = 16384). The
    per-step arrays (dA, dBu, the stored states and adjoints) stay in the input's dtype and are
    rounded once each."""
    return np.float64(x)


# ------------------------------------------------------------------------------------------------
# Copies between a tensor's rows and a tile's scratch.
# ------------------------------------------------------------------------------------------------


@njit(**JIT)
def load_rows(src, r0, t0, t1, dst):
    """dst[j, :t1-t0] = src[r0 + j, t0:t1] for every row j of dst. src (rows, l); dst (rows', T)."""
    wide_simd()
    for j in range(dst.shape[0]):
        s = src[r0 + j, t0:t1]
        o = dst[j]
        for tt in range(s.shape[0]):
            o[tt] = s[tt]


@njit(**JIT)
def store_rows(src, dst, r0, t0, t1, accumulate):
    """dst[r0 + j, t0:t1] = src[j, :t1-t0] (or +=) for every row j of src (rows', T)."""
    wide_simd()
    for j in range(src.shape[0]):
        s = src[j]
        o = dst[r0 + j, t0:t1]
        if accumulate:
            for tt in range(o.shape[0]):
                o[tt] += s[tt]
        else:
            for tt in range(o.shape[0]):
                o[tt] = s[tt]


@njit(**JIT)
def stream_rows(src, dst, r0, t0, t1):
    """dst[r0 + j, t0:t1] = src[j, :t1-t0] for every row j of src, with `stream_row`."""
    for j in range(src.shape[0]):
        stream_row(src[j], dst[r0 + j, t0:t1])


# ------------------------------------------------------------------------------------------------
# The forward phases: discretize, recurrence, readout.
# ------------------------------------------------------------------------------------------------


@njit(**JIT)
def discretize(u, ur, uc, x, xr, xc, B, Br, Bc, A, bias, softplus, tl, dtb, dAb, dBub, sgb, sig):
    """Phase 1, equations (1a, 1b), SIMD along the tile.

    Reads u[ur + j, uc:uc+tl] and delta x[xr + j, xc:xc+tl] for the cb channels j,
    B[Br + m, Bc:Bc+tl] for the n states m; A (cb, n); bias (cb,).
    Writes dtb (cb, T) = dt; dAb, dBub (cb*n, T): row j*n+m holds exp(dt*A[j, m]) and
    dt*u*B[m]; with `sig` and softplus also sgb (cb, T) = sigmoid(delta + bias), the derivative
    of dt, from the same exponential. At most two stores per loop: more would need runtime
    alias checks before LLVM vectorizes.
    """
    wide_simd()
    cb = dtb.shape[0]
    n = A.shape[1]
    for j in range(cb):
        xj = x[xr + j, xc : xc + tl]
        uj = u[ur + j, uc : uc + tl]
        dt = dtb[j]
        bj = bias[j]
        if softplus and sig:
            sg = sgb[j]
            for tt in range(tl):
                dt[tt], sg[tt] = softplus_sigmoid_(xj[tt] + bj)
        elif softplus:
            for tt in range(tl):
                dt[tt] = softplus_(xj[tt] + bj)
        else:
            for tt in range(tl):
                dt[tt] = xj[tt] + bj
        for m in range(n):
            a = dAb[j * n + m]
            bu = dBub[j * n + m]
            Ajm = A[j, m]
            Bm = B[Br + m, Bc : Bc + tl]
            if softplus and Ajm <= zero_of(A):  # dt >= 0, so dt * A <= 0: the cheaper exp
                for tt in range(tl):
                    a[tt] = exp_nonpositive_(dt[tt] * Ajm)
                    bu[tt] = dt[tt] * uj[tt] * Bm[tt]
            else:
                for tt in range(tl):
                    a[tt] = exp_(dt[tt] * Ajm)
                    bu[tt] = dt[tt] * uj[tt] * Bm[tt]


# The four ways to walk four chains (direction x which state is stored), one loop per function:
# with two reversed loops in one function both measured 50% slower, an artefact of code layout.


@njit(**JIT)
def _forward_after(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, tl):
    for tt in range(tl):
        s0 = a0[tt] * s0 + b0[tt]
        s1 = a1[tt] * s1 + b1[tt]
        s2 = a2[tt] * s2 + b2[tt]
        s3 = a3[tt] * s3 + b3[tt]
        o0[tt], o1[tt], o2[tt], o3[tt] = s0, s1, s2, s3
    return s0, s1, s2, s3


@njit(**JIT)
def _forward_before(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, tl):
    for tt in range(tl):
        o0[tt], o1[tt], o2[tt], o3[tt] = s0, s1, s2, s3
        s0 = a0[tt] * s0 + b0[tt]
        s1 = a1[tt] * s1 + b1[tt]
        s2 = a2[tt] * s2 + b2[tt]
        s3 = a3[tt] * s3 + b3[tt]
    return s0, s1, s2, s3


@njit(**JIT)
def _reverse_after(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, tl):
    for tt in range(tl - 1, -1, -1):
        s0 = a0[tt] * s0 + b0[tt]
        s1 = a1[tt] * s1 + b1[tt]
        s2 = a2[tt] * s2 + b2[tt]
        s3 = a3[tt] * s3 + b3[tt]
        o0[tt], o1[tt], o2[tt], o3[tt] = s0, s1, s2, s3
    return s0, s1, s2, s3


@njit(**JIT)
def _reverse_before(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, tl):
    for tt in range(tl - 1, -1, -1):
        o0[tt], o1[tt], o2[tt], o3[tt] = s0, s1, s2, s3
        s0 = a0[tt] * s0 + b0[tt]
        s1 = a1[tt] * s1 + b1[tt]
        s2 = a2[tt] * s2 + b2[tt]
        s3 = a3[tt] * s3 + b3[tt]
    return s0, s1, s2, s3


@njit(**JIT)
def recurrence(dAb, dBub, states, state, tl, reverse, after):
    """Phase 2 of the forward, the carry in the input's dtype: see `carried_recurrence`."""
    carried_recurrence(dAb, dBub, states, state, tl, reverse, after, zero_of(state))


@njit(**JIT)
def carried_recurrence(dAb, dBub, states, state, tl, reverse, after, carry):
    """Phase 2, equation (2): h_t = dA_t h_{t-1} + dBu_t for the R = cb*n chains of a tile.

    dAb, dBub (R, T); state (R,): the state before the tile, updated to the state after it.
    states (R, T) receives each step's state: h_t with `after` (what the readout needs), else
    h_{t-1} (what the gradients need). The tile is walked in scratch order or, with `reverse`,
    backwards (the reversed routes of the fused core). Four chains advance per iteration: one
    chain is one FMA per step with a 4-cycle latency, so alone it would leave the FMA units
    idle (eight chains spill registers and measured slower).

    The carry runs in `carry`'s dtype (a zero): the input's in the forward (`recurrence`), whose
    y has no long sum, and float64 in the backward's sweep (`wide_`), whose stored states are
    then rounded once each, with no rounding carried from step to step. (A float64 carry in the
    forward measured 50% slower at VMamba-T stage 1, n = 1: the conversions double the work of
    a loop that is not only latency-bound there.)
    """
    R = state.shape[0]
    for r in range(0, R, 4):
        r1 = min(r + 1, R - 1)  # a short last group repeats its last chain: same values, same place
        r2 = min(r + 2, R - 1)
        r3 = min(r + 3, R - 1)
        chains = (
            dAb[r], dAb[r1], dAb[r2], dAb[r3], dBub[r], dBub[r1], dBub[r2], dBub[r3],
            states[r], states[r1], states[r2], states[r3],
            carry + state[r], carry + state[r1], carry + state[r2], carry + state[r3],
        )  # fmt: skip
        if reverse and after:
            s0, s1, s2, s3 = _reverse_after(*chains, tl)
        elif reverse:
            s0, s1, s2, s3 = _reverse_before(*chains, tl)
        elif after:
            s0, s1, s2, s3 = _forward_after(*chains, tl)
        else:
            s0, s1, s2, s3 = _forward_before(*chains, tl)
        state[r], state[r1], state[r2], state[r3] = s0, s1, s2, s3


# Routes 1 and 3 of the fused SS2D core on a whole grid (`ss2d_core.whole_routes`): dA, dBu and
# the states stay in row-major position order, and only the recurrences walk the grid column by
# column, reading and writing at each step's position (p = i*w + j). One loop per function, as
# above: one loop for both directions, its indices computed from a flag, measured 1.1-2.3x
# slower per element (7x7 to 56x56 grids, one thread).


@njit(**JIT)
def _columns_forward_after(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, h, w):
    for j in range(w):
        for i in range(h):
            p = i * w + j
            s0 = a0[p] * s0 + b0[p]
            s1 = a1[p] * s1 + b1[p]
            s2 = a2[p] * s2 + b2[p]
            s3 = a3[p] * s3 + b3[p]
            o0[p], o1[p], o2[p], o3[p] = s0, s1, s2, s3
    return s0, s1, s2, s3


@njit(**JIT)
def _columns_forward_before(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, h, w):
    for j in range(w):
        for i in range(h):
            p = i * w + j
            o0[p], o1[p], o2[p], o3[p] = s0, s1, s2, s3
            s0 = a0[p] * s0 + b0[p]
            s1 = a1[p] * s1 + b1[p]
            s2 = a2[p] * s2 + b2[p]
            s3 = a3[p] * s3 + b3[p]
    return s0, s1, s2, s3


@njit(**JIT)
def _columns_reverse_after(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, h, w):
    for j in range(w - 1, -1, -1):
        for i in range(h - 1, -1, -1):
            p = i * w + j
            s0 = a0[p] * s0 + b0[p]
            s1 = a1[p] * s1 + b1[p]
            s2 = a2[p] * s2 + b2[p]
            s3 = a3[p] * s3 + b3[p]
            o0[p], o1[p], o2[p], o3[p] = s0, s1, s2, s3
    return s0, s1, s2, s3


@njit(**JIT)
def _columns_reverse_before(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, s0, s1, s2, s3, h, w):
    for j in range(w - 1, -1, -1):
        for i in range(h - 1, -1, -1):
            p = i * w + j
            o0[p], o1[p], o2[p], o3[p] = s0, s1, s2, s3
            s0 = a0[p] * s0 + b0[p]
            s1 = a1[p] * s1 + b1[p]
            s2 = a2[p] * s2 + b2[p]
            s3 = a3[p] * s3 + b3[p]
    return s0, s1, s2, s3


@njit(**JIT)
def column_recurrence(dAb, dBub, states, state, h, w, reverse, after, carry):
    """`carried_recurrence` for routes 1 and 3 of an h x w grid whose dA and dBu (R, >= h*w)
    are in row-major position order: the chains walk the grid column by column (route 1), or
    that backwards (route 3, `reverse`), and states receives h_t (`after`) or h_{t-1} at each
    step's position. Measured per element and route, one thread: 0.48-0.76 ns for this walk
    against 1.64-2.34 ns for copying x, delta and y column-major and walking the copy (7x7 to
    56x56 grids, 16 chains)."""
    R = state.shape[0]
    for r in range(0, R, 4):
        r1 = min(r + 1, R - 1)  # a short last group repeats its last chain: same values, same place
        r2 = min(r + 2, R - 1)
        r3 = min(r + 3, R - 1)
        chains = (
            dAb[r], dAb[r1], dAb[r2], dAb[r3], dBub[r], dBub[r1], dBub[r2], dBub[r3],
            states[r], states[r1], states[r2], states[r3],
            carry + state[r], carry + state[r1], carry + state[r2], carry + state[r3],
        )  # fmt: skip
        if reverse and after:
            s0, s1, s2, s3 = _columns_reverse_after(*chains, h, w)
        elif reverse:
            s0, s1, s2, s3 = _columns_reverse_before(*chains, h, w)
        elif after:
            s0, s1, s2, s3 = _columns_forward_after(*chains, h, w)
        else:
            s0, s1, s2, s3 = _columns_forward_before(*chains, h, w)
        state[r], state[r1], state[r2], state[r3] = s0, s1, s2, s3


@njit(**JIT)
def readout_row(u, ur, uc, C, Cr, Cc, states, D, has_D, tl, j, out, accumulate):
    """Channel j of phase 3, equation (3): out[:tl] = y_t = sum_n C_tn h_tn + D u_t (or +=),
    SIMD along the tile. Rows u[ur + j, uc:uc+tl] and C[Cr + m, Cc:Cc+tl] as in `discretize`;
    states (cb*n, T) the states h_t from `recurrence(after=True)`; D (cb,)."""
    wide_simd()
    n = states.shape[0] // D.shape[0]
    uj = u[ur + j, uc : uc + tl]
    Cm = C[Cr, Cc : Cc + tl]
    state_m = states[j * n]
    Dj = D[j] if has_D else zero_of(D)
    if accumulate:
        for tt in range(tl):
            out[tt] += Dj * uj[tt] + Cm[tt] * state_m[tt]
    else:
        for tt in range(tl):
            out[tt] = Dj * uj[tt] + Cm[tt] * state_m[tt]
    for m in range(1, n):
        Cm = C[Cr + m, Cc : Cc + tl]
        state_m = states[j * n + m]
        for tt in range(tl):
            out[tt] += Cm[tt] * state_m[tt]


@njit(**JIT)
def readout(u, ur, uc, C, Cr, Cc, states, D, has_D, tl, y, yr, yc, accumulate):
    """Phase 3 for the cb channels of the tile: writes y[yr + j, yc:yc+tl] or, with
    `accumulate`, adds to it (the fused SS2D core sums its four routes into one map)."""
    for j in range(D.shape[0]):
        readout_row(
            u, ur, uc, C, Cr, Cc, states, D, has_D, tl, j, y[yr + j, yc : yc + tl], accumulate
        )


@njit(**JIT)
def readout_streaming(u, ur, uc, C, Cr, Cc, states, D, has_D, tl, y, yr, yc, row):
    """Phase 3 into an output that nothing reads soon: each channel's y goes to the scratch row
    `row` (T,), which stays in L1, then to y[yr + j, yc:yc+tl] by `stream_row`, so that y's
    lines are written without first being read from memory."""
    for j in range(D.shape[0]):
        readout_row(u, ur, uc, C, Cr, Cc, states, D, has_D, tl, j, row, False)
        stream_row(row, y[yr + j, yc : yc + tl])


# ------------------------------------------------------------------------------------------------
# The backward of a tile: the forward sweep, the adjoint recurrence, the gradients.
# ------------------------------------------------------------------------------------------------


@njit(**JIT)
def adjoint(G, dAb, q, tl, reverse):
    """Equation (4), against the route's direction, for the R = cb*n chains of a tile:
    g_t = dy_t C_t + q, q <- dA_t g_t, where q carries dA_{t+1} g_{t+1}.

    G (R, T) holds dy_t C_tn on entry and g_tn on exit; dAb (R, T); q (R,) comes in from the
    tile after and leaves as dA_{t0} g_{t0} (after a route's first step: d initial_state).
    `reverse` as in `recurrence`: the adjoint then walks the scratch forwards. Four chains per
    iteration, as in `recurrence` (reading dy and C here instead of G measured slower: five
    streams per chain spill registers). The carry q runs in float64, as in `recurrence`.
    """
    R = q.shape[0]
    for r in range(0, R, 4):
        r1 = min(r + 1, R - 1)
        r2 = min(r + 2, R - 1)
        r3 = min(r + 3, R - 1)
        g0, g1, g2, g3 = G[r], G[r1], G[r2], G[r3]
        a0, a1, a2, a3 = dAb[r], dAb[r1], dAb[r2], dAb[r3]
        q0, q1, q2, q3 = wide_(q[r]), wide_(q[r1]), wide_(q[r2]), wide_(q[r3])
        if reverse:
            for tt in range(tl):
                v0 = g0[tt] + q0
                v1 = g1[tt] + q1
                v2 = g2[tt] + q2
                v3 = g3[tt] + q3
                g0[tt], g1[tt], g2[tt], g3[tt] = v0, v1, v2, v3
                q0 = a0[tt] * v0
                q1 = a1[tt] * v1
                q2 = a2[tt] * v2
                q3 = a3[tt] * v3
        else:
            for tt in range(tl - 1, -1, -1):
                v0 = g0[tt] + q0
                v1 = g1[tt] + q1
                v2 = g2[tt] + q2
                v3 = g3[tt] + q3
                g0[tt], g1[tt], g2[tt], g3[tt] = v0, v1, v2, v3
                q0 = a0[tt] * v0
                q1 = a1[tt] * v1
                q2 = a2[tt] * v2
                q3 = a3[tt] * v3
        q[r], q[r1], q[r2], q[r3] = q0, q1, q2, q3


@njit(**JIT)
def _columns_adjoint(g0, g1, g2, g3, a0, a1, a2, a3, q0, q1, q2, q3, h, w, backwards):
    # With `backwards`, last column to first (against route 1), else first to last (against
    # route 3). Unlike the recurrences' loops, one loop serves both directions: its float64
    # carry bounds the step, and two copies of the loop measured no faster (1.04-1.10 ns per
    # element either way, 7x7 to 56x56 grids, one thread).
    for jj in range(w):
        j = w - 1 - jj if backwards else jj
        for ii in range(h):
            p = (h - 1 - ii if backwards else ii) * w + j
            v0 = g0[p] + q0
            v1 = g1[p] + q1
            v2 = g2[p] + q2
            v3 = g3[p] + q3
            g0[p], g1[p], g2[p], g3[p] = v0, v1, v2, v3
            q0 = a0[p] * v0
            q1 = a1[p] * v1
            q2 = a2[p] * v2
            q3 = a3[p] * v3
    return q0, q1, q2, q3


@njit(**JIT)
def column_adjoint(G, dAb, q, h, w, reverse):
    """`adjoint` for routes 1 and 3 of an h x w grid in row-major position order (see
    `column_recurrence`): against the route, so route 1 (not `reverse`) walks the columns last
    to first and route 3 first to last."""
    R = q.shape[0]
    for r in range(0, R, 4):
        r1 = min(r + 1, R - 1)
        r2 = min(r + 2, R - 1)
        r3 = min(r + 3, R - 1)
        q0, q1, q2, q3 = _columns_adjoint(
            G[r], G[r1], G[r2], G[r3], dAb[r], dAb[r1], dAb[r2], dAb[r3],
            wide_(q[r]), wide_(q[r1]), wide_(q[r2]), wide_(q[r3]), h, w, not reverse,
        )  # fmt: skip
        q[r], q[r1], q[r2], q[r3] = q0, q1, q2, q3


@njit(**JIT)
def gradients(
    inputs, temps, dtb, sgb, dAb, dBub, prev, A, D, softplus, has_D, tl, dA_acc, dD_acc, dbias_acc
):
    """Gradients of one tile from its states h_{t-1} (prev) and adjoint states g (G), SIMD along
    the tile. With h_t = dA_t h_{t-1} + dBu_t and j running over the block's channels:

        dC_tn    = sum_j dy_t h_tn               dB_tn = sum_j g_tn dt_t u_t
        du_t     = D dy_t + sum_n g_tn dt_t B_tn
        ddt_t    = sum_n g_tn (dA_tn A_n h_{t-1,n} + B_tn u_t)
        ddelta_t = ddt_t sigmoid(x_t)            (ddt_t without softplus)
        dA_n    += sum_t g_tn dA_tn h_{t-1,n} dt_t
        dD      += sum_t dy_t u_t                dbias += sum_t ddelta_t

    inputs, temps: `bwd_scratch`'s (ub, dyb, Bb and G filled); dtb, sgb (cb, T), dAb, dBub,
    prev (cb*n, T): the tile's kept discretization and states. Writes gu, gdt (cb, T) (du,
    ddelta) and dBb, dCb (n, T); adds into dA_acc (cb, n), dD_acc and dbias_acc (cb,), float64
    arrays: the sums over time run in float64 (`wide_`), so that their error does not grow with l.
    """
    wide_simd()
    ub, xb, dyb, Bb, Cb = inputs
    G, gu, gdt, dBb, dCb = temps
    cb = dtb.shape[0]
    n = Bb.shape[0]
    z = zero_of(ub)
    for m in range(n):
        dBm = dBb[m]
        dCm = dCb[m]
        for tt in range(tl):
            dBm[tt] = z
            dCm[tt] = z
    for j in range(cb):
        uj = ub[j]
        dyj = dyb[j]
        dtj = dtb[j]
        guj = gu[j]
        gdtj = gdt[j]
        Dj = D[j] if has_D else z
        for tt in range(tl):
            guj[tt] = Dj * dyj[tt]
            gdtj[tt] = z
        for m in range(n):
            r = j * n + m
            g = G[r]
            a = dAb[r]
            bu = dBub[r]
            prev_r = prev[r]
            Bm = Bb[m]
            dBm = dBb[m]
            dCm = dCb[m]
            Ajm = A[j, m]
            for tt in range(tl):
                dCm[tt] += dyj[tt] * (a[tt] * prev_r[tt] + bu[tt])
            for tt in range(tl):
                dBm[tt] += g[tt] * dtj[tt] * uj[tt]
            for tt in range(tl):
                guj[tt] += g[tt] * dtj[tt] * Bm[tt]
            sA = wide_(z)
            for tt in range(tl):
                gap = g[tt] * a[tt] * prev_r[tt]
                gdtj[tt] += gap * Ajm + g[tt] * Bm[tt] * uj[tt]
                sA += wide_(gap * dtj[tt])
            dA_acc[j, m] += sA
        sbias = wide_(z)
        sD = wide_(z)
        if softplus:
            sgj = sgb[j]
            for tt in range(tl):
                v = gdtj[tt] * sgj[tt]
                gdtj[tt] = v
                sbias += wide_(v)
                sD += wide_(dyj[tt] * uj[tt])
        else:
            for tt in range(tl):
                sbias += wide_(gdtj[tt])
                sD += wide_(dyj[tt] * uj[tt])
        dbias_acc[j] += sbias
        dD_acc[j] += sD


@njit(**JIT)
def sweep_tile(
    u, ur, uc, x, xr, xc, B, Br, Bc, A, bias, softplus, tl, reverse, kept, ti, state, grid_w
):
    """The backward's forward sweep over tile ti: discretize into tile ti's kept arrays
    (`bwd_scratch`), and advance `state` (cb*n,) over the tile with a float64 carry, keeping
    h_{t-1} at every step. Sources as `discretize`. grid_w = 0: the tile is in walk order;
    grid_w > 0: it is a whole grid of that width in row-major order, walked column by column
    (`column_recurrence`)."""
    dts, sgs, dAs, dBus, prev_states = kept
    discretize(
        u, ur, uc, x, xr, xc, B, Br, Bc, A, bias, softplus, tl, dts[ti], dAs[ti], dBus[ti],
        sgs[ti], True,
    )  # fmt: skip
    carry = wide_(zero_of(state))
    if grid_w > 0:
        column_recurrence(
            dAs[ti], dBus[ti], prev_states[ti], state, tl // grid_w, grid_w, reverse, False, carry
        )
    else:
        carried_recurrence(dAs[ti], dBus[ti], prev_states[ti], state, tl, reverse, False, carry)


@njit(**JIT)
def tile_bwd(
    inputs, temps, kept, ti, A, D, softplus, has_D, q, tl, reverse, dA_acc, dD_acc, dbias_acc,
    grid_w,
):  # fmt: skip
    """Backward of tile ti, whose ub, dyb, Bb, Cb (inputs) the caller has filled and whose
    discretization and states the sweep kept. q (cb*n,): the adjoint carry, updated to the
    tile's start. Writes gu, gdt, dBb, dCb (temps); adds into the parameter accumulators (see
    `gradients`). grid_w as in `sweep_tile`."""
    wide_simd()
    ub, xb, dyb, Bb, Cb = inputs
    G, gu, gdt, dBb, dCb = temps
    dts, sgs, dAs, dBus, prev_states = kept
    cb = ub.shape[0]
    n = Bb.shape[0]
    for j in range(cb):
        dyj = dyb[j]
        for m in range(n):
            g = G[j * n + m]
            Cm = Cb[m]
            for tt in range(tl):
                g[tt] = dyj[tt] * Cm[tt]
    if grid_w > 0:
        column_adjoint(G, dAs[ti], q, tl // grid_w, grid_w, reverse)
    else:
        adjoint(G, dAs[ti], q, tl, reverse)
    gradients(
        inputs, temps, dts[ti], sgs[ti], dAs[ti], dBus[ti], prev_states[ti], A, D, softplus,
        has_D, tl, dA_acc, dD_acc, dbias_acc,
    )  # fmt: skip
