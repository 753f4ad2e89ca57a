"""The fused SS2D core on the CPU: cross-scan, selective scan of the four routes and cross-merge,
in one Numba kernel that never materializes the four scanned copies.

Same function, signature and layouts as `vmamba_ref.ss2d_core` (VMamba section 3.3):

    y = sum over routes k of merge_k(S6_k(scan_k(x)))        x (b, d, h, w) -> y (b, d, h, w)

with the step-size logits delta (b, k, d, h, w) and projections B, C (b, k, n, h, w) on the grid.

Memory traffic. Cross-scan + scan + cross-merge run separately move, per element of x,
    cross-scan  1 read + 4 writes,   scan  8 reads (u, delta) + 4 writes (y),   merge 4 reads + 1 write
(22 transfers of b*d*l numbers, plus B and C); the fused kernel reads x once and delta once
(one read per route) and writes y once: 1 + 4 + 1 transfers, with no (b, 4, d, l) tensor at
all. The four routes' reads of x and their sums into y stay in the work item's scratch.

Kernel design. The prange runs over (batch bi, channels c0:c1 of one or more channel blocks):
an item copies x[bi, c0:c1] channel-major into its scratch (`xm`), sums the four routes into
`ym` beside it in a fixed order (0, 1, 2, 3), so results do not depend on the thread count,
and stores `ym` into y[bi, c0:c1]. x and y may be stored channel-first or channels_last, the
layout of the network's CPU maps (`load_channels`, `store_channels`): y is stored like x
(`vmamba_fast.ops.ss2d_core_output`), so neither needs a layout copy around the call.

Every route runs the selective scan's tile routines (`tiles.py`, which `selective_scan.py`
uses too): discretize and read out along memory (SIMD), the recurrence in route order. When a
whole route fits in one tile (`whole_routes`: l <= `time_tile`, every VMamba stage up to a
64 x 64 grid), the routes differ only in how the recurrence walks the grid: routes 0 and 2
along memory, forwards and backwards; routes 1 and 3 column by column (`column_recurrence`),
reading and writing dA, dBu and the states at each step's grid position. Nothing is copied
column-major; that made the forward 1.10-1.32x faster than copying bands (below), measured per
VMamba-T stage. Longer routes are cut into tiles:

| route | tiles (in route order)                | tile fetch                         | walk    |
|-------|---------------------------------------|------------------------------------|---------|
| 0     | runs of `tile` row-major positions    | read in place                      | forward |
| 1     | bands of tw = tile // h columns       | x, delta: column-major copy        | forward |
| 2     | route 0's tiles, last to first        | read in place                      | reverse |
| 3     | route 1's bands, last to first        | x, delta: column-major copy        | reverse |

("In place": x in the item's `xm`, delta in the caller's tensor.) Both ways form every sum in
the same order, so the tile size changes no bit of y (tests/test_numba_ss2d_core.py).

For tiled routes, B and C of routes 1 and 3 are passed column-major (one copy of these small
projections per call, `column_major_odd_routes`), so every route reads its B and C in place;
without it, each channel block re-copied the bands of all n rows of B and C, n times the work
of x at n = 16.

Each route's chains start from a zero state (VMamba's SS2D has no initial state).

A second pair of kernels, `_ss2d_core_fwd_positions_kernel` and
`_ss2d_core_bwd_positions_kernel`, runs when delta is stored with its channels innermost
((b, k, h, w, d) in memory, `channels_last_steps`), as the network makes it on the CPU
(`vmamba_ref.ss2d.SS2D.scan`). Then x, delta and y hold each grid position's
channels side by side, so a work item (an image and a chunk of its channels,
`position_chunk`) walks each route one position at a time in route order
(`route_positions`) with its channels in the vector lanes: discretization, recurrence and
readout in one pass per step, the states in registers and scratch, no tile and no copy. The
sums over routes run in the same order (route 0 writes y, 1-3 add). Measured per call against
the kernel above at VMamba-T's stage shapes (n = 1, batch 8, one process, calls interleaved):
1.07-1.7x at stage 1, 1.3-1.5x at stage 2, 1.8-2.1x at stage 3, 2.5-2.7x at stage 4; at
n = 16, 2.6-4.4x. Its column-major routes read rows w*d numbers apart, which the hardware
prefetchers do not follow: on a 56 x 56 grid they take 1.4-1.8x the time of the row-major
ones per element, so on those routes every step prefetches the rows it will reach
`PREFETCH_STEPS` steps on. The backward (`_position_route_bwd`) walks each route forwards once to keep
the state before every step, then backwards through the adjoint recurrence, the channels in
the lanes again; its work items have a chunk size fixed by the shapes (`positions_bwd_chunk`),
so that its sums over chunks (dB, dC) do not depend on the thread count. Per call against the
kernel below (n = 1, batch 8): 1.2x at stage 1, 1.0-1.2x at stage 2, 1.2-1.4x at stage 3,
2.1-2.3x at stage 4; at n = 16 (batch 2), 2.2-3.8x.

The backward pass follows the selective scan's: per route, a forward sweep keeps every tile's
discretization and states, then the tiles run last to first through the adjoint recurrence;
dx sums the four routes' du in the same fixed order. On a whole grid, routes 1 and 3 walk the
columns there too (`column_recurrence`, `column_adjoint`) and everything else runs along
memory: 1.10-1.30x faster than copying bands per VMamba-T stage at batch 8, with bitwise the
same gradients. B and C are shared by the d
channels of a route, so their gradients are summed per channel block into a partial buffer that
the caller reduces.

Official implementation: `cross_selective_scan` in VMamba's `vmamba.py` (CrossScan, the CUDA
scan, CrossMerge as three kernels). Deviation: fused, as in VMamba's own fused Triton/CUDA
variants, which do not exist for the CPU.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
import torch
from numba import njit, prange

from vmamba_fast import ops
from vmamba_fast.numba.config import (
    JIT,
    PARALLEL_JIT,
    active,
    launch,
    threads_for,
    wide_simd,
)
from vmamba_fast.numba.memory import (
    ROW_PAD,
    as_kernel_array,
    check_cpu,
    partial_sums,
    prefetch_span,
    reaches_cpu_kernel,
    take,
)
from vmamba_fast.numba.numerics import (
    exp_,
    exp_nonpositive_,
    softplus_,
    softplus_sigmoid_,
    zero_of,
)
from vmamba_fast.numba.tiles import (
    bwd_scratch,
    channel_block,
    column_recurrence,
    discretize,
    fwd_scratch,
    load_rows,
    readout,
    recurrence,
    store_rows,
    sweep_tile,
    tile_bwd,
    time_tile,
    wide_,
    workspace,
)
from vmamba_ref.contract import (
    ROUTES,
    check_finite,
    check_selective_scan_args,
    check_ss2d_core_args,
    compute_dtype,
    route_positions,
)


@njit(**JIT)
def load_band(src, r0, h, w, w0, tw, dst):
    """Column-major copy of a band of tw grid columns starting at column w0:
    dst[j, col*h + i] = src[r0 + j, i*w + w0 + col] for every row j of dst, i < h, col < tw.
    src (rows, h*w) grid rows in row-major order; dst (rows', T) scratch, T >= tw*h."""
    wide_simd()
    for j in range(dst.shape[0]):
        s = src[r0 + j]
        o = dst[j]
        for col in range(tw):
            column = s[w0 + col :: w]  # (h,), stride w
            oc = o[col * h : (col + 1) * h]
            for i in range(h):
                oc[i] = column[i]


@njit(**JIT)
def store_band(src, dst, r0, h, w, w0, tw, accumulate):
    """The inverse of `load_band`: dst[r0 + j, i*w + w0 + col] = (or +=) src[j, col*h + i] for every
    row j of src (rows', T)."""
    wide_simd()
    for j in range(src.shape[0]):
        s = src[j]
        o = dst[r0 + j]
        for col in range(tw):
            column = o[w0 + col :: w]  # (h,), stride w
            sc = s[col * h : (col + 1) * h]
            if accumulate:
                for i in range(h):
                    column[i] += sc[i]
            else:
                for i in range(h):
                    column[i] = sc[i]


@njit(**JIT)
def whole_routes(h, w, tile):
    """Whether every route of an h x w grid is one tile of `tile` steps: then routes 1 and 3 run
    on the grid in row-major order except for their recurrence (`column_recurrence`), and
    read B and C row-major; otherwise they copy bands of columns (`load_band`)."""
    return tile >= h * w


@njit(**JIT)
def load_channels(src, c0, span, dst):
    """dst[j, :l] = src[c0 + j, :] for j < span: a work item's channels of a (d, l) map, copied
    channel-major into its scratch. src is either layout the network stores: channel-first
    (each channel a contiguous row: row copies) or channels_last (a position's channels
    contiguous: a transpose, one position's run of channels read at a time)."""
    wide_simd()
    l = src.shape[1]
    if src.strides[1] == src.itemsize:  # channel-first
        for j in range(span):
            s = src[c0 + j]
            o = dst[j]
            for t in range(l):
                o[t] = s[t]
    else:  # channels_last, or any other strides: position by position
        positions = src.T  # (l, d)
        for t in range(l):
            s = positions[t, c0 : c0 + span]  # (span,), contiguous when channels_last
            for j in range(span):
                dst[j, t] = s[j]


@njit(**JIT)
def store_channels(src, span, dst, c0):
    """The inverse of `load_channels`: dst[c0 + j, :] = src[j, :l] for j < span, dst in either
    layout."""
    wide_simd()
    l = dst.shape[1]
    if dst.strides[1] == dst.itemsize:  # channel-first
        for j in range(span):
            s = src[j]
            o = dst[c0 + j]
            for t in range(l):
                o[t] = s[t]
    else:  # channels_last, or any other strides: position by position
        positions = dst.T  # (l, d)
        for t in range(l):
            o = positions[t, c0 : c0 + span]  # (span,), contiguous when channels_last
            for j in range(span):
                o[j] = src[j, t]


@njit(**JIT)
def route_tile(route, i, h, w, tile, tw):
    """Geometry of the i-th tile, in route order, of `route` on an h x w grid.

    Returns (band, start, size, tl, reverse): for routes 0 and 2 a run of tl = size row-major
    positions starting at `start`; for routes 1 and 3 (band=True) a band of `size` columns
    starting at column `start`, tl = size*h steps. `reverse`: the route walks the tile backwards.
    """
    l = h * w
    if route == 0 or route == 2:
        ntiles = (l + tile - 1) // tile
        ti = i if route == 0 else ntiles - 1 - i
        t0 = ti * tile
        tl = min(tile, l - t0)
        return False, t0, tl, tl, route == 2
    nbands = (w + tw - 1) // tw
    bj = i if route == 1 else nbands - 1 - i
    w0 = bj * tw
    size = min(tw, w - w0)
    return True, w0, size, size * h, route == 3


@njit(**JIT)
def route_tiles(route, h, w, tile, tw):
    """Number of tiles of `route` (see `route_tile`)."""
    if route == 0 or route == 2:
        return (h * w + tile - 1) // tile
    return (w + tw - 1) // tw


@njit(**JIT)
def core_tiles(h, w, tile):
    """(tw, T, ntiles_max): columns per band of the column-major routes, scratch length of a tile
    (a run of `tile` positions or a band of tw*h), and the most tiles a route has."""
    tw = max(1, tile // h)
    return (
        tw,
        max(tile, tw * h),
        max(route_tiles(0, h, w, tile, tw), route_tiles(1, h, w, tile, tw)),
    )


@njit(**PARALLEL_JIT)
def _ss2d_core_fwd_kernel(
    x, delta, A, B, C, D, bias, softplus, has_D, block, per_item, tile, h, w, work, y
):
    """Fused SS2D core forward.

    x, y (b, d, l) the feature map and the merged output (l = h*w), each stored channel-first
    or channels_last (`load_channels`); delta (b, k, d, l); B, C (b, k, n, l), with routes 1
    and 3 column-major (`column_major_odd_routes`) unless `whole_routes`; A (k*d, n); D, bias
    (k*d,); all but x and y
    C-contiguous, one float dtype; work (threads, S) scratch (`workspace`, tiles of
    `core_tiles(h, w, tile)[1]` after the item's two maps of per_item*block rows of l).

    The prange runs over b*nitems items: item -> batch bi and `per_item` consecutive channel
    blocks of `block` channels. An item first copies its channels of x channel-major into its
    scratch (`xm`), where every route reads them, and sums the four routes into `ym` beside
    it: route 0 writes, routes 1-3 add, in that order for every channel; then it stores `ym`
    into y. So neither map needs a layout of its own in memory: the network's channels_last
    maps go in and come out as they are, with no copy around the call, and an item's rows stay
    in its core's cache across the four routes. Routes are the outer loop and blocks the inner
    one, so that a route's B and C (n rows of l) stay in cache across the item's blocks (with
    n = 16 the four routes' together overflow L2).
    """
    b, d, l = x.shape
    n = B.shape[2]
    nblk = (d + block - 1) // block
    nitems = (nblk + per_item - 1) // per_item
    tw, T, _ = core_tiles(h, w, tile)
    whole = whole_routes(h, w, tile)
    span_max = min(per_item * block, d)
    for item in prange(b * nitems):
        bi = item // nitems
        first = (item % nitems) * per_item
        last = min(first + per_item, nblk)
        c0 = first * block
        span = min(last * block, d) - c0
        ws = work[numba.get_thread_id()]  # (S,)
        xm, o = take(ws, 0, span_max, l)  # (span_max, l + pad): x[bi, c0 + j] in row j
        ym, o = take(ws, o, span_max, l)  # (span_max, l + pad): y[bi, c0 + j] in row j
        tws = ws[o:]  # the tiles' scratch
        load_channels(x[bi], c0, span, xm)
        for route in range(4):
            ds, Bs, Cs = delta[bi, route], B[bi, route], C[bi, route]  # (d, l), (n, l), (n, l)
            for blk in range(first, last):
                ch0 = blk * block
                cb = min(ch0 + block, d) - ch0
                r0 = ch0 - c0  # the block's first row in xm and ym
                (ub, xb, yb, Bb, Cb, dtb, dAb, dBub, states), state = fwd_scratch(tws, cb, n, T)
                p0 = route * d + ch0
                Ab, Db, biasb = A[p0 : p0 + cb], D[p0 : p0 + cb], bias[p0 : p0 + cb]
                state[:] = 0
                if whole:  # one tile per route, every phase but the recurrence in memory order
                    discretize(
                        xm, r0, 0, ds, ch0, 0, Bs, 0, 0, Ab, biasb, softplus, l, dtb, dAb, dBub,
                        dtb, False,
                    )  # fmt: skip
                    if route == 0 or route == 2:
                        recurrence(dAb, dBub, states, state, l, route == 2, True)
                        readout(xm, r0, 0, Cs, 0, 0, states, Db, has_D, l, ym, r0, 0, route > 0)
                    else:  # y's sum formed as the band path forms it: tiles change no bit
                        column_recurrence(
                            dAb, dBub, states, state, h, w, route == 3, True, zero_of(state)
                        )
                        readout(xm, r0, 0, Cs, 0, 0, states, Db, has_D, l, yb, 0, 0, False)
                        store_rows(yb, ym, r0, 0, l, True)
                    continue
                for i in range(route_tiles(route, h, w, tile, tw)):
                    band, t0, size, tl, reverse = route_tile(route, i, h, w, tile, tw)
                    if band:  # copy x, delta column-major into scratch, scan there, add back
                        load_band(xm, r0, h, w, t0, size, ub)
                        load_band(ds, ch0, h, w, t0, size, xb)
                        p = t0 * h  # B, C of routes 1, 3 are stored column-major: read in place
                        discretize(
                            ub, 0, 0, xb, 0, 0, Bs, 0, p, Ab, biasb, softplus, tl, dtb, dAb,
                            dBub, dtb, False,
                        )  # fmt: skip
                        recurrence(dAb, dBub, states, state, tl, reverse, True)
                        readout(ub, 0, 0, Cs, 0, p, states, Db, has_D, tl, yb, 0, 0, False)
                        store_band(yb, ym, r0, h, w, t0, size, True)
                    else:  # a run of row-major positions: read and accumulate in place
                        discretize(
                            xm, r0, t0, ds, ch0, t0, Bs, 0, t0, Ab, biasb, softplus, tl, dtb,
                            dAb, dBub, dtb, False,
                        )  # fmt: skip
                        recurrence(dAb, dBub, states, state, tl, reverse, True)
                        readout(
                            xm, r0, t0, Cs, 0, t0, states, Db, has_D, tl, ym, r0, t0, route > 0
                        )
        store_channels(ym, span, y[bi], c0)


# ------------------------------------------------------------------------------------------------
# The forward with the channels along the vector: for maps and step sizes stored channels_last.
# ------------------------------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _position_step(u, dl, yo, Bs, Cs, p, At, Db, bb, st, dtb, softplus, has_D, nonpositive, first):
    """One step of a route at grid position p for an item's cw channels, SIMD across them.

    u, dl, yo (cw,): x, delta and y at p (rows of channels_last maps); Bs, Cs (n, l): the
    route's projections; At (n, cw): A of the item's channels, transposed; Db, bb (cw,): D and
    the delta bias; st (n, cw): the carried states, advanced one step; dtb (cw,): scratch for
    dt. y at p gets the route's readout: written by route 0 (`first`), added by routes 1-3.
    `nonpositive`: every dt * A is <= 0 (softplus with A <= 0), so the cheaper exp applies.
    Inlined into the route loop, so that the row views cost no call.
    """
    cw = u.shape[0]
    n = At.shape[0]
    for j in range(cw):  # (1a) dt = softplus(delta + bias)
        z = dl[j] + bb[j]
        dtb[j] = softplus_(z) if softplus else z
    for j in range(cw):  # y starts from the skip term
        if first:
            yo[j] = Db[j] * u[j] if has_D else zero_of(Db)
        elif has_D:
            yo[j] += Db[j] * u[j]
    for m in range(n):  # (1b, 2, 3) per state: discretize, advance, read out
        a, s, b, c = At[m], st[m], Bs[m, p], Cs[m, p]
        if nonpositive:
            for j in range(cw):
                s[j] = exp_nonpositive_(dtb[j] * a[j]) * s[j] + dtb[j] * u[j] * b
                yo[j] += c * s[j]
        else:
            for j in range(cw):
                s[j] = exp_(dtb[j] * a[j]) * s[j] + dtb[j] * u[j] * b
                yo[j] += c * s[j]


@njit(inline="always", **JIT)
def _position_step_1(u, dl, yo, b, c, a, Db, bb, s, first):
    """`_position_step` for VMamba-T/S/B's case, n = 1 with softplus, A <= 0 and D, in one pass:
    b, c the scalars B and C at the position; a (cw,) A of the chunk; s (cw,) the states."""
    if first:
        for j in range(u.shape[0]):
            dt = softplus_(dl[j] + bb[j])
            s[j] = exp_nonpositive_(dt * a[j]) * s[j] + dt * u[j] * b
            yo[j] = c * s[j] + Db[j] * u[j]
    else:
        for j in range(u.shape[0]):
            dt = softplus_(dl[j] + bb[j])
            s[j] = exp_nonpositive_(dt * a[j]) * s[j] + dt * u[j] * b
            yo[j] += c * s[j] + Db[j] * u[j]


PREFETCH_STEPS = 4
"""How many steps ahead the channels-in-lanes kernels prefetch the rows of a column-major route
(routes 1 and 3, `prefetch_steps`). Those rows lie w*d numbers apart, pages apart at every
VMamba-T stage, where the hardware prefetchers stop. Measured on the AMD host per call of the
forward kernel alone, bitwise the same y, against no prefetch: 1.27x (caches warm) and 1.88x
(cold) at stage 1, batch 1; 1.31x and 1.21x at stage 2, batch 5; 1.03-1.10x at stage 3; 8 and
16 steps ahead gave the same or less. Per operator call, backward and whole model:
docs/kernels.md."""


@njit(inline="always", **JIT)
def prefetch_steps(route):
    """Steps ahead to prefetch on `route`: `PREFETCH_STEPS` on the column-major routes (1 and
    3 in `vmamba_ref.contract.route_positions`), none on the row-major ones, which walk memory
    in order and need none."""
    return PREFETCH_STEPS if route % 2 == 1 else 0


@njit(inline="always", **JIT)
def _prefetch_rows(arrays, order, t, c0, c1):
    """Prefetch the channels c0 : c1 of the row that step t of a route visits (position
    order[t]) in each (l, d) array of the tuple; nothing when t lies outside the route."""
    if 0 <= t < order.shape[0]:
        q = order[t]
        for rows in arrays:
            prefetch_span(rows, q, c0, c1)


@njit(**JIT)
def _position_route_1(xs, ds, ys, Bs, Cs, a, Db, bb, s, c0, order, first, ahead):
    """`_position_route` through `_position_step_1`: Bs, Cs (l,) the projections of the one
    state; a, s (cw,). A function of its own: inlined beside the general step, the loop lost
    its vectorization (measured 10x slower)."""
    wide_simd()
    c1 = c0 + s.shape[0]
    l = order.shape[0]
    s[:] = 0
    for t in range(l):
        if ahead > 0:  # the rows `ahead` steps on, asked for now
            _prefetch_rows((xs, ds, ys), order, t + ahead, c0, c1)
        p = order[t]
        u, dl, yo = xs[p, c0:c1], ds[p, c0:c1], ys[p, c0:c1]  # (cw,) each
        _position_step_1(u, dl, yo, Bs[p], Cs[p], a, Db, bb, s, first)


@njit(**JIT)
def _position_route(
    xs, ds, ys, Bs, Cs, At, Db, bb, st, dtb, c0, order, first, softplus, has_D, nonpositive, ahead
):  # fmt: skip
    """One route for the channels c0 : c0 + cw of one image: a `_position_step` at every grid
    position of `order` (l,), the route's positions in the order it visits them
    (`vmamba_ref.contract.route_positions`). xs, ds, ys (l, d): x, the route's delta and y,
    channels_last; Bs, Cs (n, l); At, st (n, cw); `first`: route 0, which writes y. The rows
    `ahead` steps on are prefetched (`prefetch_steps`; 0: none)."""
    wide_simd()
    c1 = c0 + dtb.shape[0]
    l = order.shape[0]
    st[:] = 0
    for t in range(l):
        if ahead > 0:
            _prefetch_rows((xs, ds, ys), order, t + ahead, c0, c1)
        p = order[t]
        u, dl, yo = xs[p, c0:c1], ds[p, c0:c1], ys[p, c0:c1]  # (cw,) each
        _position_step(u, dl, yo, Bs, Cs, p, At, Db, bb, st, dtb, softplus, has_D, nonpositive, first)


@njit(**JIT)
def _route_parameters(A, D, bias, p0, softplus, At, Db, bb):
    """A work item's parameters of one route, copied where the lanes read them: At[m, j] =
    A[p0 + j, m] (transposed), Db, bb (span,) = D, bias from p0. Returns whether the cheaper
    exp applies (softplus with every A <= 0, so dt * A <= 0)."""
    nonpositive = softplus
    for j in range(Db.shape[0]):
        Db[j] = D[p0 + j]
        bb[j] = bias[p0 + j]
        for m in range(At.shape[0]):
            At[m, j] = A[p0 + j, m]
            nonpositive = nonpositive and A[p0 + j, m] <= zero_of(A)
    return nonpositive


@njit(**PARALLEL_JIT)
def _ss2d_core_fwd_positions_kernel(
    x, delta, A, B, C, D, bias, softplus, has_D, cw, order, work, states, y
):
    """Fused SS2D core forward for channels_last maps, SIMD across channels.

    x, y (b, l, d) channels_last maps; delta (b, k, l, d) the step sizes stored the same way;
    B, C (b, k, n, l); A (k*d, n); D, bias (k*d,); order (k, l) the grid positions of each
    route in visiting order; work and states: the scratch of `positions_workspace(n, cw)`. The prange runs over (batch bi, a chunk of cw channels); each
    item walks the four routes in order (route 0 writes y, routes 1-3 add), one position at a
    time, the chunk's channels side by side in the vector lanes and every state in the
    item's scratch. Every number of a channel is computed by the same operations whatever the
    chunk, so y does not depend on cw (nor on the thread count).
    """
    b, l, d = x.shape
    n = B.shape[2]
    nch = (d + cw - 1) // cw
    for item in prange(b * nch):
        bi = item // nch
        c0 = (item % nch) * cw
        span = min(cw, d - c0)
        ws = work[numba.get_thread_id()]  # (S,)
        st = states[numba.get_thread_id()]  # (n + 1, cw + pad): the states, then dt
        At, o = take(ws, 0, n, cw)  # (n, cw + pad): A transposed
        vecs, o = take(ws, o, 2, cw)  # (2, cw + pad): D, bias
        # Rows sliced one by one: a 2-D slice of columns would type as strided ("A" layout),
        # and loops over its rows would not vectorize. Loops run over u's cw = span lanes.
        dtb, Db, bb = st[n, :span], vecs[0, :span], vecs[1, :span]
        for route in range(4):
            p0 = route * d + c0
            nonpositive = _route_parameters(A, D, bias, p0, softplus, At, Db, bb)
            if n == 1 and nonpositive and has_D:
                _position_route_1(
                    x[bi], delta[bi, route], y[bi], B[bi, route, 0], C[bi, route, 0],
                    At[0, :span], Db, bb, st[0, :span], c0, order[route], route == 0,
                    prefetch_steps(route),
                )  # fmt: skip
            else:
                _position_route(
                    x[bi], delta[bi, route], y[bi], B[bi, route], C[bi, route], At, Db, bb, st,
                    dtb, c0, order[route], route == 0, softplus, has_D, nonpositive,
                    prefetch_steps(route),
                )  # fmt: skip


@njit(**JIT)
def _position_route_bwd(
    xs, ds, dys, Bs, Cs, At, Db, bb, order, first, softplus, has_D, nonpositive, c0, Hs, v,
    acc, dxs, dds, dBs, dCs, ahead,
):  # fmt: skip
    """The backward of one route for the channels c0 : c0 + cw of one image, SIMD across them.

    xs, ds, dys (l, d): x, the route's delta and dy, channels_last; Bs, Cs (n, l); At (n, cw);
    Db, bb (cw,); order (l,) the route's positions in visiting order. Scratch: Hs (l, n, cw)
    the state before every step, kept by the forward sweep; v (n + 5, cw) the adjoints g
    (rows :n), then a = exp(dt A), dt, sigmoid, du and ddt of a step; acc (n + 2, cw) float64 sums over
    time of dA (rows :n), dD and dbias. Writes dxs (route 0) or adds to it, writes dds (l, d)
    and the route's per-position sums over the chunk's channels dBs, dCs (n, l). Both sweeps
    prefetch the rows `ahead` steps on (`prefetch_steps`; 0: none).

    Per step t (position p), walking the route backwards, with g_m = dL/dh_t[m]:
        g_m += C_m dy;   dC_m[p] = sum_j dy h_m;   dB_m[p] = sum_j g_m dt u
        du += g_m dt B_m;   ddt += g_m (A_m a_m h_{t-1} + u B_m);   dA_m += g_m h_{t-1} dt a_m
        g_m *= a_m  (the adjoint of h_{t-1}),   a_m = exp(dt A_m)
    At most two arrays are written per loop, which LLVM vectorizes without alias checks.
    """
    wide_simd()
    l = order.shape[0]
    n = At.shape[0]
    cw = Db.shape[0]
    c1 = c0 + cw
    g, ab, dtb, sgb, dub, ddtb = v[:n], v[n], v[n + 1], v[n + 2], v[n + 3], v[n + 4]
    one = zero_of(Db) + 1
    # The forward sweep: the state before every step.
    for m in range(n):
        s = g[m]
        for j in range(cw):
            s[j] = zero_of(Db)
    for t in range(l):
        if ahead > 0:
            _prefetch_rows((xs, ds), order, t + ahead, c0, c1)
        p = order[t]
        u, dl = xs[p, c0:c1], ds[p, c0:c1]
        for j in range(cw):
            z = dl[j] + bb[j]
            dtb[j] = softplus_(z) if softplus else z
        for m in range(n):
            s, kept, a, b = g[m], Hs[t, m], At[m], Bs[m, p]
            for j in range(cw):
                kept[j] = s[j]
            if nonpositive:
                for j in range(cw):
                    s[j] = exp_nonpositive_(dtb[j] * a[j]) * s[j] + dtb[j] * u[j] * b
            else:
                for j in range(cw):
                    s[j] = exp_(dtb[j] * a[j]) * s[j] + dtb[j] * u[j] * b
    # The backward sweep.
    for m in range(n):
        s = g[m]
        for j in range(cw):
            s[j] = zero_of(Db)
    for tt in range(l):
        t = l - 1 - tt
        if ahead > 0:  # walking backwards: the rows `ahead` steps back
            _prefetch_rows((xs, ds, dys, dxs, dds), order, t - ahead, c0, c1)
        p = order[t]
        u, dl, dy = xs[p, c0:c1], ds[p, c0:c1], dys[p, c0:c1]
        for j in range(cw):
            z = dl[j] + bb[j]
            if softplus:
                dtb[j], sgb[j] = softplus_sigmoid_(z)
            else:
                dtb[j], sgb[j] = z, one
        for j in range(cw):
            dub[j] = Db[j] * dy[j] if has_D else zero_of(Db)
            ddtb[j] = zero_of(Db)
        for m in range(n):
            gm, prev, a, b, c = g[m], Hs[t, m], At[m], Bs[m, p], Cs[m, p]
            if nonpositive:
                for j in range(cw):
                    ab[j] = exp_nonpositive_(dtb[j] * a[j])
                    gm[j] += c * dy[j]
            else:
                for j in range(cw):
                    ab[j] = exp_(dtb[j] * a[j])
                    gm[j] += c * dy[j]
            sum_c = zero_of(Db)
            sum_b = zero_of(Db)
            for j in range(cw):
                sum_c += dy[j] * (ab[j] * prev[j] + dtb[j] * u[j] * b)
                sum_b += gm[j] * dtb[j] * u[j]
            dCs[m, p] = sum_c
            dBs[m, p] = sum_b
            for j in range(cw):
                dub[j] += gm[j] * dtb[j] * b
                ddtb[j] += gm[j] * (a[j] * ab[j] * prev[j] + u[j] * b)
            dA = acc[m]
            for j in range(cw):
                dA[j] += wide_(gm[j] * prev[j] * dtb[j] * ab[j])
                gm[j] *= ab[j]
        dd = dds[p, c0:c1]
        for j in range(cw):
            dd[j] = ddtb[j] * sgb[j]
            acc[n + 1, j] += wide_(ddtb[j] * sgb[j])
        dx = dxs[p, c0:c1]
        if first:
            for j in range(cw):
                dx[j] = dub[j]
                acc[n, j] += wide_(dy[j] * u[j])
        else:
            for j in range(cw):
                dx[j] += dub[j]
                acc[n, j] += wide_(dy[j] * u[j])


@njit(**PARALLEL_JIT)
def _ss2d_core_bwd_positions_kernel(
    x, delta, A, B, C, D, bias, dy, softplus, has_D, cw, order, work, hist, vecs, sums,
    dx, ddelta, dA_part, dB_part, dC_part, dD_part, dbias_part,
):  # fmt: skip
    """Fused SS2D core backward for channels_last maps and step sizes stored channels innermost
    (the layouts of `_ss2d_core_fwd_positions_kernel`), SIMD across channels.

    x, dy, dx (b, l, d); delta, ddelta (b, k, l, d); B, C (b, k, n, l); A (k*d, n); D, bias
    (k*d,); order (k, l). Partial sums that the caller reduces: dA_part (b, k*d, n), dD_part,
    dbias_part (b, k*d), float64 (over b); dB_part, dC_part (b, nch, k, n, l) (over the nch
    chunks of cw channels, fixed by the shapes, not by the thread count). Scratch per thread:
    work (params), hist (l, n, cw + pad), vecs (n + 5, cw + pad), sums (n + 2, cw + pad) float64.
    """
    b, l, d = x.shape
    n = B.shape[2]
    nch = (d + cw - 1) // cw
    for item in prange(b * nch):
        bi = item // nch
        ci = item % nch
        c0 = ci * cw
        span = min(cw, d - c0)
        tid = numba.get_thread_id()
        At, o = take(work[tid], 0, n, cw)  # (n, cw + pad): A transposed
        pv, o = take(work[tid], o, 2, cw)  # (2, cw + pad): D, bias
        Db, bb = pv[0, :span], pv[1, :span]
        # Whole rows, C-contiguous: a slice of columns would type as strided and would not
        # vectorize; the routine's loops run over the span = len(Db) lanes.
        Hs, v, acc = hist[tid], vecs[tid], sums[tid]  # (l, n, cw + pad), (n + 5, ...), (n + 2, ...)
        for route in range(4):
            p0 = route * d + c0
            nonpositive = _route_parameters(A, D, bias, p0, softplus, At, Db, bb)
            for r in range(n + 2):
                for j in range(span):
                    acc[r, j] = 0.0
            _position_route_bwd(
                x[bi], delta[bi, route], dy[bi], B[bi, route], C[bi, route], At, Db,
                bb, order[route], route == 0, softplus, has_D, nonpositive, c0, Hs, v, acc,
                dx[bi], ddelta[bi, route], dB_part[bi, ci, route], dC_part[bi, ci, route],
                prefetch_steps(route),
            )  # fmt: skip
            for j in range(span):
                for m in range(n):
                    dA_part[bi, p0 + j, m] = acc[m, j]
                dD_part[bi, p0 + j] = acc[n, j]
                dbias_part[bi, p0 + j] = acc[n + 1, j]


def positions_workspace(n: int, cw: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Scratch of `_ss2d_core_fwd_positions_kernel` for every thread: A (n rows of cw), D and
    the bias (one row each), then in an array of its own the states (n rows) and dt. Two
    arrays, because LLVM does not vectorize a loop that writes one part of an array and reads
    another at offsets it cannot compare (measured 10x slower with one)."""
    threads, row = numba.config.NUMBA_NUM_THREADS, cw + ROW_PAD
    params = torch.empty(threads, (n + 2) * row, dtype=dtype).numpy()
    return params, torch.empty(threads, n + 1, row, dtype=dtype).numpy()


def position_chunk(b: int, d: int) -> int:
    """Channels per work item of the channels_last forward: all d when the batch alone gives
    every thread an item, else d split among the threads, in multiples of 16 (one AVX-512
    vector of float32). Long chunks amortize each step's fixed cost (measured per element and
    route on a 56 x 56 grid of 256 channels, one thread: 2.5 ns with 16 channels per item,
    1.4 ns with 96, 1.2 ns with 256)."""
    chunks = max(1, -(-numba.get_num_threads() // b))  # items per image
    return min(d, 16 * -(-d // (16 * chunks)))


@njit(**PARALLEL_JIT)
def _ss2d_core_bwd_kernel(
    x, delta, A, B, C, D, bias, dy, softplus, has_D, block, tile, groups, h, w, work,
    dx, ddelta, dA_part, dB_part, dC_part, dD_part, dbias_part,
):  # fmt: skip
    """Fused SS2D core backward, recomputing the states.

    Inputs as `_ss2d_core_fwd_kernel` (x C-contiguous here) plus dy (b, d, l); work has room
    for the most tiles a route has (`core_tiles`). Outputs: dx (b, d, l) (route 0 writes,
    routes 1-3 add); ddelta (b, k, d, l); partial sums that the caller reduces: dA_part
    (b, k*d, n), dD_part, dbias_part (b, k*d) (over b; float64, as their sums over time);
    dB_part, dC_part (b, groups, k, n, l) in B's and C's layout, zero on entry (over the
    groups).

    The prange runs over b*groups items: item -> batch bi, group g, which takes the channel
    blocks g, g+groups, ..., route by route (routes outside blocks, so that a route's B and C
    stay in cache), and adds their dB, dC into its own partial row (`groups` is fixed, so the
    sums do not depend on the thread count); dx gets route 0, then 1, 2, 3 for every channel.
    Per block and route, a forward sweep keeps every tile's discretization and states, then
    the tiles run last to first.
    """
    b, d, l = x.shape
    n = B.shape[2]
    nblk = (d + block - 1) // block
    tw, T, ntiles_max = core_tiles(h, w, tile)
    whole = whole_routes(h, w, tile)
    for item in prange(b * groups):
        bi = item // groups
        g = item % groups
        xs, dys, dxs = x[bi], dy[bi], dx[bi]  # (d, l)
        ws = work[numba.get_thread_id()]  # (S,)
        for route in range(4):  # routes outside blocks: a route's B, C stay in cache
            ds, Bs, Cs = delta[bi, route], B[bi, route], C[bi, route]  # (d | n, l)
            dds, dBs, dCs = ddelta[bi, route], dB_part[bi, g, route], dC_part[bi, g, route]
            ntiles = route_tiles(route, h, w, tile, tw)
            # On a whole grid, routes 1 and 3 run like 0 and 2 except for their recurrences'
            # walk (`column_recurrence`, `column_adjoint`): grid_w > 0.
            grid_w = w if whole and (route == 1 or route == 3) else 0
            for blk in range(g, nblk, groups):
                ch0 = blk * block
                cb = min(ch0 + block, d) - ch0
                inputs, temps, kept, state, q = bwd_scratch(ws, cb, n, T, ntiles_max)
                ub, xb, dyb, Bb, Cb = inputs
                G, gu, gdt, dBb, dCb = temps
                p0 = route * d + ch0
                Ab, Db, biasb = A[p0 : p0 + cb], D[p0 : p0 + cb], bias[p0 : p0 + cb]
                state[:] = 0
                for i in range(ntiles):
                    band, start, size, tl, reverse = route_tile(route, i, h, w, tile, tw)
                    if grid_w > 0:  # the whole grid, row-major: start = 0, tl = l
                        sweep_tile(
                            xs, ch0, 0, ds, ch0, 0, Bs, 0, 0, Ab, biasb, softplus, tl, reverse,
                            kept, i, state, grid_w,
                        )  # fmt: skip
                    elif band:
                        load_band(xs, ch0, h, w, start, size, ub)
                        load_band(ds, ch0, h, w, start, size, xb)
                        sweep_tile(
                            ub, 0, 0, xb, 0, 0, Bs, 0, start * h, Ab, biasb, softplus, tl, reverse,
                            kept, i, state, 0,
                        )  # fmt: skip
                    else:
                        sweep_tile(
                            xs, ch0, start, ds, ch0, start, Bs, 0, start, Ab, biasb, softplus, tl,
                            reverse, kept, i, state, 0,
                        )  # fmt: skip
                q[:] = 0
                for i in range(ntiles - 1, -1, -1):
                    band, start, size, tl, reverse = route_tile(route, i, h, w, tile, tw)
                    band = band and grid_w == 0
                    start = 0 if grid_w > 0 else start  # a band's first column; here position 0
                    if band:
                        load_band(xs, ch0, h, w, start, size, ub)
                        load_rows(Bs, 0, start * h, start * h + tl, Bb)
                        load_rows(Cs, 0, start * h, start * h + tl, Cb)
                        load_band(dys, ch0, h, w, start, size, dyb)
                    else:
                        load_rows(xs, ch0, start, start + tl, ub)
                        load_rows(Bs, 0, start, start + tl, Bb)
                        load_rows(Cs, 0, start, start + tl, Cb)
                        load_rows(dys, ch0, start, start + tl, dyb)
                    tile_bwd(
                        inputs, temps, kept, i, Ab, Db, softplus, has_D, q, tl, reverse,
                        dA_part[bi, p0 : p0 + cb], dD_part[bi, p0 : p0 + cb],
                        dbias_part[bi, p0 : p0 + cb], grid_w,
                    )  # fmt: skip
                    if band:
                        store_band(gu, dxs, ch0, h, w, start, size, route > 0)
                        store_band(gdt, dds, ch0, h, w, start, size, False)
                        store_rows(dBb, dBs, 0, start * h, start * h + tl, True)
                        store_rows(dCb, dCs, 0, start * h, start * h + tl, True)
                    else:
                        store_rows(gu, dxs, ch0, start, start + tl, route > 0)
                        store_rows(gdt, dds, ch0, start, start + tl, False)
                        store_rows(dBb, dBs, 0, start, start + tl, True)
                        store_rows(dCb, dCs, 0, start, start + tl, True)


_VALID_LAYOUTS: dict[tuple, tuple[int, int, int, int, int]] = {}
"""Argument layouts that `_check_all` accepted, with what it returned (at most 256, then
forgotten): a layout is each argument's type and, for a tensor, its shape, dtype and device."""


def _layout(*args: object) -> tuple:
    return tuple(
        (type(t), t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else type(t) for t in args
    )


def _check(x, delta, A, B, C, D, delta_bias):
    """The validation of a core call (`_check_all`). Of what it checks, only the finiteness of
    A, D and delta_bias reads values; everything else is a function of the arguments' layouts.
    So a call whose layout passed before runs only the finiteness checks, which `_check_all`
    runs last and in this order: the same errors, in less time (measured per call: 66 to 23
    microseconds alone, about 165 to 90 inside a VMamba-T forward, which makes 14 to 30 calls).
    Returns (b, d, h, w, n)."""
    layout = _layout(x, delta, A, B, C, D, delta_bias)
    sizes = _VALID_LAYOUTS.get(layout)
    if sizes is None:
        sizes = _check_all(x, delta, A, B, C, D, delta_bias)
        if len(_VALID_LAYOUTS) >= 256:
            _VALID_LAYOUTS.clear()
        _VALID_LAYOUTS[layout] = sizes
        return sizes
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_finite("selective_scan", name, t)  # as check_selective_scan_args names them
    return sizes


def _check_all(x, delta, A, B, C, D, delta_bias):
    """Every check of a core call: the device, then the reference's checks in the reference's
    order: the grid layouts, then the scan's (dtypes, A, D, delta_bias, finiteness) on
    zero-memory stand-ins of the scanned tensors, so that every error reads as the reference's
    (naming `ss2d_core`, or `selective_scan` for the scan's checks, as the reference does).
    Returns (b, d, h, w, n)."""
    fn = "ss2d_core"
    check_cpu(fn, x=x, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    b, d, h, w, n = check_ss2d_core_args(fn, x, delta, A, B, C)
    if h < 1 or w < 1:
        route_positions(h, w)  # raises the reference's error for an empty grid
    l = h * w
    check_selective_scan_args(
        "selective_scan",
        x.new_empty(()).expand(b, ROUTES * d, l),  # (b, k*d, l) like cross_scan(x)
        delta.new_empty(()).expand(b, ROUTES * d, l),  # (b, k*d, l)
        A,
        B.new_empty(()).expand(b, ROUTES, n, l),  # (b, k, n, l)
        C.new_empty(()).expand(b, ROUTES, n, l),  # (b, k, n, l)
        D,
        delta_bias,
    )
    return b, d, h, w, n


def column_major_odd_routes(t: np.ndarray) -> np.ndarray:
    """(b, k, n, h, w) grid projections -> (b, k, n, l) with routes 0 and 2 row-major and routes
    1 and 3 column-major, so that the kernels read every route's B and C in place.

    One copy of the (small) projections, made with NumPy on the calling thread; the feature map
    and delta stay on the grid. Its inverse is `row_major_odd_routes`.
    """
    b, k, n, h, w = t.shape
    out = t.reshape(b, k, n, h * w).copy()  # (b, k, n, l)
    out[:, 1::2] = t[:, 1::2].swapaxes(-1, -2).reshape(b, k // 2, n, h * w)  # (b, 2, n, w*h)
    return out


def row_major_odd_routes(t: np.ndarray, h: int, w: int) -> np.ndarray:
    """The inverse of `column_major_odd_routes`: (b, k, n, l) -> (b, k, n, h, w) on the grid."""
    b, k, n, _ = t.shape
    out = t.reshape(b, k, n, h, w).copy()  # (b, k, n, h, w)
    out[:, 1::2] = t[:, 1::2].reshape(b, k // 2, n, w, h).swapaxes(-1, -2)  # (b, 2, n, h, w)
    return out


def map_rows(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A (b, d, h, w) map as the forward kernel reads and writes it: a (b, d, l) NumPy view in
    `dtype`, stored channel-first or channels_last as t is (`load_channels` takes both); a map
    of any other strides is copied contiguous first."""
    b, d, h, w = t.shape
    t = t.detach().to(dtype)  # keeps the layout
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        t = t.contiguous()
    return t.view(b, d, h * w).numpy()  # (b, d, l)


def _kernel_args(x, delta, A, B, C, D, delta_bias, x_rows=None, bands=True):
    """The kernels' arguments from x to delta_bias; x as `x_rows` when given, else contiguous;
    B and C with routes 1 and 3 column-major for kernels that copy bands of columns, else
    row-major as given (`whole_routes`)."""
    b, d, h, w = x.shape
    n = B.shape[2]
    dtype = compute_dtype(x.dtype)
    zeros = partial_sums((ROUTES * d,), dtype)
    projections = column_major_odd_routes if bands else lambda t: t.reshape(b, ROUTES, n, h * w)
    return dtype, (
        as_kernel_array(x, dtype).reshape(b, d, h * w) if x_rows is None else x_rows,  # (b, d, l)
        as_kernel_array(delta, dtype).reshape(b, ROUTES, d, h * w),  # (b, k, d, l)
        as_kernel_array(A, dtype),  # (k*d, n)
        projections(as_kernel_array(B, dtype)),  # (b, k, n, l)
        projections(as_kernel_array(C, dtype)),  # (b, k, n, l)
        zeros if D is None else as_kernel_array(D, dtype),  # (k*d,)
        zeros if delta_bias is None else as_kernel_array(delta_bias, dtype),  # (k*d,)
    )


def ss2d_core_fwd_cpu(x, delta, A, B, C, D, delta_bias, delta_softplus):
    """Forward on CPU tensors -> y (b, d, h, w) in the computation dtype, stored channels_last
    for a channels_last x (`ops.ss2d_core_output`): the CPU kernel of `vmamba::ss2d_core_fwd`.
    Validates its arguments: the one check of every forward call
    (`ss2d_core`, torch.compile'd graphs, direct `torch.ops.vmamba` calls)."""
    b, d, h, w, n = _check(x, delta, A, B, C, D, delta_bias)
    dtype = compute_dtype(x.dtype)
    l = h * w
    if channels_last_steps(delta):
        return _fwd_positions(x, delta, A, B, C, D, delta_bias, delta_softplus, position_chunk(b, d))
    block, tile = channel_block(n), time_tile(l)
    bands = not whole_routes(h, w, tile)
    _, args = _kernel_args(x, delta, A, B, C, D, delta_bias, x_rows=map_rows(x, dtype), bands=bands)
    y = ops.ss2d_core_output(x, dtype)  # (b, d, h, w), channels_last for a channels_last x
    per_item = max(1, active().chains // block)  # blocks per work item: 16 channels and more
    maps = 2 * min(per_item * block, d) * (l + ROW_PAD)  # an item's xm and ym
    work = workspace(block, n, core_tiles(h, w, tile)[1], dtype, extra=maps)  # (threads, S)
    with threads_for(4 * x.numel()):
        launch(_ss2d_core_fwd_kernel)(
            *args, bool(delta_softplus), D is not None, block, per_item, tile, h, w, work,
            map_rows(y, dtype),
        )  # fmt: skip
    return y


def channels_last_steps(delta: torch.Tensor) -> bool:
    """Whether delta (b, k, d, h, w) is stored with its channels innermost, (b, k, h, w, d) in
    memory, as the network makes it for inference on the CPU (`vmamba_ref.ss2d.SS2D.scan`):
    then the forward runs `_ss2d_core_fwd_positions_kernel`."""
    return not delta.is_contiguous() and delta.permute(0, 1, 3, 4, 2).is_contiguous()


def _fwd_positions(x, delta, A, B, C, D, delta_bias, delta_softplus, cw):
    """The forward through `_ss2d_core_fwd_positions_kernel` (arguments checked), cw channels
    per work item: y (b, d, h, w) as `ops.ss2d_core_output` lays it out."""
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    dtype = compute_dtype(x.dtype)
    y = ops.ss2d_core_output(x, dtype)  # (b, d, h, w), channels_last for a channels_last x
    y_rows = y if y.stride(1) == 1 else torch.empty_like(y, memory_format=torch.channels_last)
    work, states = positions_workspace(n, cw, dtype)  # (threads, S), (threads, n + 1, cw + pad)
    with threads_for(4 * x.numel()):
        launch(_ss2d_core_fwd_positions_kernel)(
            *_position_args(x, delta, A, B, C, D, delta_bias, dtype),
            bool(delta_softplus), D is not None, cw, route_order(h, w), work, states,
            y_rows.permute(0, 2, 3, 1).numpy().reshape(b, l, d),  # (b, l, d), a view of y
        )  # fmt: skip
    return y if y_rows is y else y.copy_(y_rows)


@lru_cache(maxsize=64)
def route_order(h: int, w: int) -> np.ndarray:
    """`route_positions(h, w)` as a read-only NumPy array (k, l), made once per grid size (a
    millisecond at 56 x 56, most of a batch-1 stage-1 call)."""
    order = route_positions(h, w).numpy()  # (k, l)
    order.flags.writeable = False
    return order


KEPT_STATES = 1 << 20
"""The kept states (numbers) that one work item of the channels_last backward aims at: 4 MiB
per thread in float32. The 16-channel floor and the rows' padding can exceed it on the
largest grids with many states: 6.1 MiB at Vanilla VMamba-T's stage 1 (l = 3136, n = 16)."""

BWD_ITEMS = 4
"""Work items that the channels_last backward makes at least, batch permitting: a batch of one
image is split into 4 chunks of channels, so that its items can run on several threads."""


def positions_bwd_chunk(b: int, d: int, n: int, l: int) -> int:
    """Channels per work item of the channels_last backward: d split into `BWD_ITEMS` // b
    chunks (rounded up), in multiples of 16, from 16 to 256, and no more than `KEPT_STATES`
    allows (the forward sweep keeps l*n*cw states). A function of the shapes only, never of the
    thread count, so that the sums of dB and dC over the chunks, and so every gradient, do not
    depend on it. Wide chunks amortize each step's fixed cost: at VMamba-T's stages (batch 8),
    256 channels measured 1.1-1.6x faster than 64 per call."""
    per_image = -(-BWD_ITEMS // b)
    cw = 16 * -(-d // (16 * per_image))
    cap = KEPT_STATES // (l * n) // 16 * 16
    return min(d, max(16, min(256, cap, cw)))


def _bwd_positions(dy, x, delta, A, B, C, D, delta_bias, delta_softplus):
    """The backward through `_ss2d_core_bwd_positions_kernel` (arguments checked): (dx, ddelta,
    dA, dB, dC, dD, ddelta_bias) in the computation dtype, dx stored like y and ddelta like
    delta (channels innermost)."""
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    dtype = compute_dtype(x.dtype)
    cw = positions_bwd_chunk(b, d, n, l)
    nch = (d + cw - 1) // cw
    dx = ops.ss2d_core_output(x, dtype)  # (b, d, h, w), channels_last for a channels_last x
    dx_rows = dx if dx.stride(1) == 1 else torch.empty_like(dx, memory_format=torch.channels_last)
    ddelta = torch.empty(b, ROUTES, h, w, d, dtype=dtype)  # (b, k, h, w, d)
    dA_part = partial_sums((b, ROUTES * d, n), torch.float64)  # (b, k*d, n)
    dD_part = partial_sums((b, ROUTES * d), torch.float64)  # (b, k*d)
    dbias_part = partial_sums((b, ROUTES * d), torch.float64)  # (b, k*d)
    dB_part = partial_sums((b, nch, ROUTES, n, l), dtype)  # (b, nch, k, n, l)
    dC_part = partial_sums((b, nch, ROUTES, n, l), dtype)  # (b, nch, k, n, l)
    threads, row = numba.config.NUMBA_NUM_THREADS, cw + ROW_PAD
    work = torch.empty(threads, (n + 2) * row, dtype=dtype).numpy()  # A, D, bias
    hist = torch.empty(threads, l, n, row, dtype=dtype).numpy()  # the kept states
    vecs = torch.empty(threads, n + 5, row, dtype=dtype).numpy()  # adjoints and a step's rows
    sums = torch.empty(threads, n + 2, row, dtype=torch.float64).numpy()  # sums over time
    with threads_for(4 * x.numel()):
        launch(_ss2d_core_bwd_positions_kernel)(
            *_position_args(x, delta, A, B, C, D, delta_bias, dtype),
            _positions(dy, dtype).reshape(b, l, d),  # (b, l, d)
            bool(delta_softplus), D is not None, cw, route_order(h, w), work, hist, vecs, sums,
            dx_rows.permute(0, 2, 3, 1).numpy().reshape(b, l, d),  # (b, l, d), a view of dx
            ddelta.numpy().reshape(b, ROUTES, l, d), dA_part, dB_part, dC_part, dD_part, dbias_part,
        )  # fmt: skip
    if dx_rows is not dx:
        dx.copy_(dx_rows)
    return (
        dx,
        ddelta.permute(0, 1, 4, 2, 3),  # (b, k, d, h, w), stored channels innermost
        torch.from_numpy(dA_part.sum(0)).to(dtype),  # (k*d, n)
        torch.from_numpy(dB_part.sum(1)).reshape(b, ROUTES, n, h, w),  # (b, k, n, h, w)
        torch.from_numpy(dC_part.sum(1)).reshape(b, ROUTES, n, h, w),  # (b, k, n, h, w)
        torch.from_numpy(dD_part.sum(0)).to(dtype),  # (k*d,)
        torch.from_numpy(dbias_part.sum(0)).to(dtype),  # (k*d,)
    )


def _position_args(x, delta, A, B, C, D, delta_bias, dtype) -> tuple[np.ndarray, ...]:
    """The channels-in-lanes kernels' arguments from x to delta_bias, as NumPy in `dtype`:
    x (b, l, d) and delta (b, k, l, d) with the channels innermost, A (k*d, n), B, C
    (b, k, n, l), D and delta_bias (k*d,), zeros for one that is None."""
    b, d, h, w = x.shape
    n, l = B.shape[2], h * w
    zeros = partial_sums((ROUTES * d,), dtype)
    return (
        _positions(x, dtype).reshape(b, l, d),  # (b, l, d)
        _positions(delta.reshape(b * ROUTES, d, h, w), dtype).reshape(b, ROUTES, l, d),
        as_kernel_array(A, dtype),  # (k*d, n)
        as_kernel_array(B, dtype).reshape(b, ROUTES, n, l),  # (b, k, n, l)
        as_kernel_array(C, dtype).reshape(b, ROUTES, n, l),  # (b, k, n, l)
        zeros if D is None else as_kernel_array(D, dtype),  # (k*d,)
        zeros if delta_bias is None else as_kernel_array(delta_bias, dtype),  # (k*d,)
    )


def _positions(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A (b, d, h, w) map as (b, h, w, d) C-contiguous NumPy in `dtype`: a view of a
    channels_last map, a copy of any other."""
    return t.detach().to(dtype).permute(0, 2, 3, 1).contiguous().numpy()  # (b, h, w, d)


def ss2d_core_bwd_cpu(dy, x, delta, A, B, C, D, delta_bias, delta_softplus):
    """Backward on CPU tensors -> (dx, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's
    dtype (the computation dtype for a D or delta_bias that is None: the gradient with respect
    to a zero one).

    The inputs are the forward's, which its kernel validated (the autograd formula passes the
    saved ones), so only what is new is checked: every tensor on the CPU (a direct call with
    another device's tensors would otherwise fail inside NumPy) and the shape of dy."""
    fn = "vmamba::ss2d_core_bwd"
    check_cpu(fn, dy=dy, x=x, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    b, d, h, w = x.shape
    n = B.shape[2]
    if tuple(dy.shape) != (b, d, h, w):
        raise ValueError(f"{fn}: `dy` must have shape {(b, d, h, w)}, got {tuple(dy.shape)}")
    like = (x, delta, A, B, C, D, delta_bias)
    if channels_last_steps(delta):
        grads = _bwd_positions(dy, x, delta, A, B, C, D, delta_bias, delta_softplus)
        return tuple(g if t is None else g.to(t.dtype) for g, t in zip(grads, like, strict=True))
    l = h * w
    tile = time_tile(l)
    bands = not whole_routes(h, w, tile)
    dtype, args = _kernel_args(x, delta, A, B, C, D, delta_bias, bands=bands)
    config = active()
    block = channel_block(n)
    groups = min((d + block - 1) // block, config.reduction_groups)
    dx = torch.empty(b, d, h, w, dtype=dtype)  # (b, d, h, w)
    ddelta = torch.empty(b, ROUTES, d, h, w, dtype=dtype)  # (b, k, d, h, w)
    dA_part = partial_sums((b, ROUTES * d, n), torch.float64)  # (b, k*d, n)
    dB_part = partial_sums((b, groups, ROUTES, n, l), dtype)  # (b, groups, k, n, l) route order
    dC_part = partial_sums((b, groups, ROUTES, n, l), dtype)  # (b, groups, k, n, l) route order
    dD_part = partial_sums((b, ROUTES * d), torch.float64)  # (b, k*d)
    dbias_part = partial_sums((b, ROUTES * d), torch.float64)  # (b, k*d)
    # dB, dC come out as the kernel read B and C: routes 1 and 3 column-major when it copied bands
    on_grid = (lambda t: row_major_odd_routes(t, h, w)) if bands else (lambda t: t.reshape(b, ROUTES, n, h, w))
    _, T, ntiles_max = core_tiles(h, w, tile)
    work = workspace(block, n, T, dtype, backward_tiles=ntiles_max)  # (threads, S)
    with threads_for(4 * x.numel()):
        launch(_ss2d_core_bwd_kernel)(
            *args, as_kernel_array(dy, dtype).reshape(b, d, l), bool(delta_softplus), D is not None,
            block, tile, groups, h, w, work,
            dx.numpy().reshape(b, d, l), ddelta.numpy().reshape(b, ROUTES, d, l), dA_part,
            dB_part, dC_part,
            dD_part, dbias_part,
        )  # fmt: skip
    # dx leaves in y's layout (`ops.ss2d_core_output`): for the network's channels_last maps one
    # copy here, where a contiguous dx made the SiLU's backward before the core take torch's
    # mixed-layout path (8x slower at VMamba-T's stage 1) and the convolution's backward copy.
    dx_out = ops.ss2d_core_output(x, x.dtype)  # (b, d, h, w), in x's dtype: one pass copies and casts
    if not dx_out.is_contiguous():
        dx = dx_out.copy_(dx)
    grads = (
        dx,
        ddelta,
        torch.from_numpy(dA_part.sum(0)).to(dtype),  # (k*d, n)
        torch.from_numpy(on_grid(dB_part.sum(1))),  # (b, k, n, h, w)
        torch.from_numpy(on_grid(dC_part.sum(1))),  # (b, k, n, h, w)
        torch.from_numpy(dD_part.sum(0)).to(dtype),  # (k*d,)
        torch.from_numpy(dbias_part.sum(0)).to(dtype),  # (k*d,)
    )
    return tuple(g if t is None else g.to(t.dtype) for g, t in zip(grads, like, strict=True))


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
    """`vmamba_ref.ss2d_core` on the Numba backend: cross-scan, scan every route, cross-merge,
    fused. x (b, d, h, w); delta (b, k, d, h, w); A (k*d, n); B, C (b, k, n, h, w); D,
    delta_bias (k*d,) -> y (b, d, h, w) in float32 (float64 for float64 x), stored
    channels_last when x is (as the network keeps its CPU maps), else contiguous. Differentiable in
    every tensor argument through the `vmamba::ss2d_core_fwd` operator, whose CPU kernel
    validates the arguments. A call that cannot reach that kernel (a tensor off the CPU, an
    argument that is not a tensor) raises here instead, with the same checks."""
    if not torch.compiler.is_compiling() and not reaches_cpu_kernel(
        (x, delta, A, B, C), (D, delta_bias)
    ):
        _check(x, delta, A, B, C, D, delta_bias)  # raises
    return ops.ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus)
