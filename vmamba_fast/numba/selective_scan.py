"""The selective scan (S6) on the CPU: Numba kernels, forward and backward, that stream the recurrence.

Same function, signature, layouts and dtype rule as `vmamba_ref.selective_scan`, the oracle
(Mamba section 3.2, algorithm 2; VMamba section 3.2). For channel c of route k and step t:

    (1a) x_t   = delta_t + delta_bias                 dt_t = softplus(x_t)   (or x_t)
    (1b) dA_tn = exp(dt_t * A_n)                      dBu_tn = dt_t * B_tn * u_t
    (2)  h_tn  = dA_tn * h_{t-1,n} + dBu_tn           h_{-1} = initial_state or 0
    (3)  y_t   = sum_n C_tn h_tn + D u_t

Kernel design. The outer, parallel loop (`prange`) runs over work items (batch bi, route ki,
block of channels c0:c1 of that route): every item owns its outputs, and sums shared by items
(dB, dC) go to a fixed number of partial buffers, so results do not depend on the thread count.
An item walks time in tiles of `config.time_tile` steps; each tile has three phases, chosen so
that everything expensive runs in SIMD over contiguous memory:

    phase 1, `discretize`  (1a, 1b) softplus and exp along time, reading the tile's rows in
                           place: one vector lane per time step
    phase 2, `recurrence`  (2) the only sequential part: cb*n >= 16 independent chains
                           advanced together, so that their FMA latencies overlap
    phase 3, `readout`     (3) along time again, SIMD

Each thread carves its scratch out of a per-call workspace (`workspace`): the kernels allocate
nothing themselves.

The backward pass recomputes rather than storing anything across the two operators: a forward
sweep over the item's tiles keeps, per tile, dt, sigmoid(delta + bias), dA, dBu and h_{t-1}
(O(chains * l) numbers per thread), then the tiles run last to first through the adjoint
recurrence

    (4)  g_tn = dy_t C_tn + dA_{t+1,n} g_{t+1,n}       g at t = l-1 starts from d(last state)

from which every gradient is a sum of products along time (`gradients`). Memory stays
O(b*k*d*l): no (b, k*d, l, n) tensor is ever allocated, and every transcendental is evaluated
once per pass.

Measured costs at VMamba-T stage 1 (b=8, k*d=384, n=1, l=3136: one tile per route), each
phase timed alone on 2 cores: discretize 4.7 ms (softplus, two exps and a log1p per element,
reading u and delta from memory), recurrence 1.5 ms, readout 2.0 ms with plain stores, of
which streaming y past the caches (`stream_row`) saves about 0.5 ms. The compute floor is
2 + n transcendental evaluations per element (softplus's exp and log1p, n exps for dA): about
4.3 ms here. benchmarks/bench_cpu.py measures the kernels against the machine's floors.

Arithmetic: float32 inputs run in float32 with a polynomial `exp` and `log1p` that LLVM
vectorizes (libm's scalar `expf` is 10x slower in a loop), and with `exp_nonpositive_`, which
drops exp's overflow path, wherever the argument cannot be positive: softplus's exp(-|x|), and
dA = exp(dt * A) in channels with A <= 0 (every VMamba model); float64 inputs run in float64 with
libm, to match the reference to 1e-9. float16/bfloat16 inputs are converted to float32 before
the kernel (Numba has no bfloat16), as the reference does.

Official implementation: `selective_scan_fwd/bwd` in VMamba's `csms6s` CUDA kernels (which keep
chunk states in shared memory the same way). Deviations: no gate z, an initial state and the
last state are supported, and the gradient with respect to the initial state is returned.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from vmamba_fast import ops
from vmamba_fast.numba.config import JIT, PARALLEL_JIT, active, threads_for
from vmamba_ref.contract import BackendUnavailableError, check_selective_scan_args, compute_dtype

# ------------------------------------------------------------------------------------------------
# Scalar arithmetic: exp, log1p, softplus and sigmoid that vectorize and survive fastmath.
# Each is a Python stub whose Numba implementation is picked by dtype at compile time.
# ------------------------------------------------------------------------------------------------

SOFTPLUS_THRESHOLD = 20.0  # softplus(x) = x above it: torch's F.softplus and VMamba's kernels
_LN2_HI = np.float32(0.693359375)  # ln 2 split in two (Cody-Waite): hi has few mantissa bits,
_LN2_LO = np.float32(-2.12194440e-4)  # so z * hi is exact for |z| < 2^9
_EXP_LO = np.float32(-87.33654)  # exp below this is under FLT_MIN: flushed to zero
_EXP_HI = np.float32(88.72283)  # exp above this overflows: inf


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with those bits (a register move, no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


CACHE_LINE = 64  # bytes


@intrinsic
def _stream_line(typingctx, dst, di, src, si):
    """Store the cache line src[si : si + CACHE_LINE / itemsize] at dst[di], which must be
    CACHE_LINE-aligned, with a non-temporal store: the line goes to memory without being read
    into the cache first. dst, src: 1-D arrays of one float dtype."""
    sig = types.void(dst, di, src, si)

    def codegen(context, builder, signature, args):
        dst_ty, _, src_ty, _ = signature.args
        d = context.make_array(dst_ty)(context, builder, args[0])
        s = context.make_array(src_ty)(context, builder, args[2])
        elt = context.get_value_type(dst_ty.dtype)
        line = ir.VectorType(elt, CACHE_LINE // context.get_abi_sizeof(elt)).as_pointer()
        value = builder.load(builder.bitcast(builder.gep(s.data, [args[3]]), line), align=1)
        store = builder.store(value, builder.bitcast(builder.gep(d.data, [args[1]]), line))
        store.align = CACHE_LINE
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return sig, codegen


def stream_row(src, dst):
    """dst[:] = src[:len(dst)] for 1-D rows, bypassing the caches where the row covers whole
    cache lines (non-temporal stores): for outputs that nothing reads soon, whose lines a plain
    store would first read from memory (read for ownership), doubling the traffic."""
    dst[:] = src[: dst.shape[0]]


@overload(stream_row)
def _stream_row_impl(src, dst):
    def stream(src, dst):
        m = dst.shape[0]
        lanes = CACHE_LINE // dst.itemsize
        head = min(m, (CACHE_LINE - dst.ctypes.data % CACHE_LINE) % CACHE_LINE // dst.itemsize)
        for t in range(head):  # up to the first line boundary: plain stores
            dst[t] = src[t]
        t = head
        while t + lanes <= m:
            _stream_line(dst, t, src, t)
            t += lanes
        for tt in range(t, m):  # the partial last line
            dst[tt] = src[tt]

    return stream


def exp_(x):
    """exp(x); float32 by a vectorizable polynomial (max relative error 2e-7), float64 by libm."""
    return math.exp(x)


def exp_nonpositive_(x):
    """exp(x) for x <= 0 (or NaN): `exp_` without its overflow handling, a quarter fewer
    instructions. The caller guarantees the sign: softplus's exp(-|x|), and dA = exp(dt * A)
    for dt >= 0 (after softplus) and A <= 0 (every VMamba model: A = -exp(A_logs))."""
    return math.exp(x)


def log1p_(e):
    """log(1 + e) for e in [0, 1]; float32 by a vectorizable polynomial, float64 by libm."""
    return math.log1p(e)


def zero_of(a):
    """A zero of array `a`'s dtype (a float literal would promote float32 arithmetic to float64)."""
    return a.dtype.type(0)


@njit(**JIT)
def _exp_reduced32(x):
    """exp(x) = 2^z * exp(r) for x in [_EXP_LO, _EXP_HI]: (z, exp(r)) with z = round(x / ln2)
    and |r| <= ln2/2. exp(r) = 1 + r + r^2 q(r), q of degree 3: a minimax fit (relative error
    1.1e-7 before rounding, 2e-7 in float32 arithmetic) that saves three FMAs over Cephes'
    degree-7 expf polynomial at float32 precision."""
    z = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))  # np.floor keeps float32
    r = x - z * _LN2_HI
    r = r - z * _LN2_LO
    q = np.float32(0.008312525227665901) * r + np.float32(0.041890114545822144)
    q = q * r + np.float32(0.16667114198207855)
    q = q * r + np.float32(0.499992311000824)
    return np.int32(z), (q * (r * r) + r) + np.float32(1.0)


@overload(exp_)
def _exp_impl(x):
    if x == types.float32:

        def exp32(x):
            # The clamps are written so that NaN compares false and passes through unchanged.
            xc = _EXP_LO if x < _EXP_LO else x
            xc = _EXP_HI if xc > _EXP_HI else xc
            zi, p = _exp_reduced32(xc)
            # 2^z as two factors, each a valid normal float for z in [-126, 128].
            z1 = zi >> np.int32(1)
            s1 = _float32_from_bits((z1 + np.int32(127)) << np.int32(23))
            s2 = _float32_from_bits((zi - z1 + np.int32(127)) << np.int32(23))
            res = p * s1 * s2
            res = np.float32(0.0) if x < _EXP_LO else res
            return np.float32(np.inf) if x > _EXP_HI else res

        return exp32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


@overload(exp_nonpositive_)
def _exp_nonpositive_impl(x):
    if x == types.float32:

        def exp_nonpositive32(x):
            # z in [-126, 0]: 2^z is one normal float, and nothing can overflow.
            xc = _EXP_LO if x < _EXP_LO else x
            zi, p = _exp_reduced32(xc)
            res = p * _float32_from_bits((zi + np.int32(127)) << np.int32(23))
            return np.float32(0.0) if x < _EXP_LO else res

        return exp_nonpositive32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


@overload(log1p_)
def _log1p_impl(e):
    if e == types.float32:

        def log1p32(e):
            # log(1 + e) = e * P(e), P of degree 8: a Chebyshev least-squares fit of log1p(e)/e
            # on [0, 1] (relative error 1.9e-7 in float32). No division and no cancellation, so
            # reassociation under fastmath cannot spoil it, and tiny e gives e exactly.
            p = np.float32(0.005253457929939032)
            p = p * e + np.float32(-0.02958850748836994)
            p = p * e + np.float32(0.07836166769266129)
            p = p * e + np.float32(-0.13674770295619965)
            p = p * e + np.float32(0.19111430644989014)
            p = p * e + np.float32(-0.24844369292259216)
            p = p * e + np.float32(0.33319270610809326)
            p = p * e + np.float32(-0.49999502301216125)
            p = p * e + np.float32(1.0)
            return e * p

        return log1p32
    if e == types.float64:
        return lambda e: math.log1p(e)
    return None


@overload(zero_of)
def _zero_of_impl(a):
    if a.dtype == types.float32:
        return lambda a: np.float32(0.0)
    return lambda a: np.float64(0.0)


def softplus_(x):
    """softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|) (eq. 1a), accurate for all x, and x
    itself above SOFTPLUS_THRESHOLD, as torch's F.softplus and VMamba's CUDA kernels do (the
    reference's definition; in float64 the dropped e^-x is visible)."""
    if x > SOFTPLUS_THRESHOLD:
        return x
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid_(x):
    """sigmoid(x) = d softplus / dx, from e^-|x| so that it never overflows."""
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


def softplus_sigmoid_(x):
    """(softplus(x), its derivative) from one exponential: what the backward needs of delta.
    The derivative is sigmoid(x), and 1 above SOFTPLUS_THRESHOLD where softplus is x."""
    return softplus_(x), (1.0 if x > SOFTPLUS_THRESHOLD else sigmoid_(x))


def _typed(x, value):
    """`value` as a constant of x's float type, for use inside an overload's implementation."""
    return np.float32(value) if x == types.float32 else np.float64(value)


@overload(softplus_)
def _softplus_impl(x):
    if x not in (types.float32, types.float64):
        return None
    zero, threshold = _typed(x, 0.0), _typed(x, SOFTPLUS_THRESHOLD)

    def softplus(x):
        sp = (x if x > zero else zero) + log1p_(exp_nonpositive_(-abs(x)))
        return x if x > threshold else sp

    return softplus


@overload(softplus_sigmoid_)
def _softplus_sigmoid_impl(x):
    if x not in (types.float32, types.float64):
        return None
    zero, one = _typed(x, 0.0), _typed(x, 1.0)
    threshold = _typed(x, SOFTPLUS_THRESHOLD)

    def softplus_sigmoid(x):
        e = exp_nonpositive_(-abs(x))
        sg = one / (one + e) if x >= zero else e / (one + e)
        sp = (x if x > zero else zero) + log1p_(e)
        return (x, one) if x > threshold else (sp, sg)

    return softplus_sigmoid


@overload(sigmoid_)
def _sigmoid_impl(x):
    if x not in (types.float32, types.float64):
        return None
    one = _typed(x, 1.0)

    def sigmoid(x):
        e = exp_nonpositive_(-abs(x))
        return one / (one + e) if x >= 0 else e / (one + e)

    return sigmoid


# ------------------------------------------------------------------------------------------------
# Tile routines. A tile is one channel block (cb channels with n states each: R = cb*n recurrence
# chains) over tl steps of one route. Phases 1 and 3 read and write rows of 2-D C-contiguous
# arrays given as (array, first row, first column): the caller's tensors when a route runs
# along memory, or contiguous scratch that the caller filled when it does not (the column-major
# routes of the fused SS2D core). Every loop is unit-stride, so LLVM vectorizes all of them
# except the recurrences, which are sequential by nature.
# ------------------------------------------------------------------------------------------------


ROW_PAD = 16  # elements added to every scratch row: at least one cache line


@intrinsic
def _pointer_at(typingctx, arr, i):
    """The address of arr[i] of a 1-D array, as a typed pointer (no bounds check)."""
    sig = types.CPointer(arr.dtype)(arr, i)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.gep(a.data, [args[1]])

    return sig, codegen


def carve(ws, offset, shape):
    """The C-contiguous array of `shape` that starts at ws[offset], a view of the 1-D ws."""
    size = math.prod(shape)
    if offset < 0 or offset + size > ws.shape[0]:
        raise IndexError("carve: the view would run past the workspace")
    return ws[offset : offset + size].reshape(shape)


@overload(carve)
def _carve_impl(ws, offset, shape):
    # ws[a:b].reshape(shape) calls Numba's generic reshape, about 90 cycles a view: a work
    # item carves 10 (forward) to 17 (backward) of them, which at VMamba-T stage 3 (768 items
    # of 196 steps) was a visible part of the kernel. carray builds the view directly.
    def impl(ws, offset, shape):
        size = 1
        for s in shape:
            size *= s
        if offset < 0 or offset + size > ws.shape[0]:
            raise IndexError("carve: the view would run past the workspace")
        return numba.carray(_pointer_at(ws, offset), shape)

    return impl


@njit(**JIT)
def take(ws, offset, rows, cols):
    """A C-contiguous (rows, cols + ROW_PAD) view of ws from `offset` and the offset after it;
    callers use the first `cols` columns. ws (S,) is one thread's row of the workspace.

    The padding keeps rows and consecutive arrays off 4 KiB multiples of each other: the
    recurrence streams 12 rows at once (4 chains x dA, dBu, h), and rows 4 KiB apart all fall in
    one set of the 8-way L1 and alias in the store-to-load forwarding, which measured 7x slower.
    """
    stride = cols + ROW_PAD
    end = offset + rows * stride
    return carve(ws, offset, (rows, stride)), end


@njit(**JIT)
def fwd_scratch(ws, cb, n, T):
    """Scratch of a forward tile, carved from ws (rows of T + ROW_PAD):
    ub, xb, yb (cb, T): u, delta, y of routes read through a copy;  Bb, Cb (n, T): B, C
    likewise;  dtb (cb, T): dt;  dAb, dBub, H (cb*n, T): row j*n+m holds dA, dBu and h_t of
    chain (j, m);  h (cb*n,): the carried state."""
    ub, o = take(ws, 0, cb, T)
    xb, o = take(ws, o, cb, T)
    yb, o = take(ws, o, cb, T)
    Bb, o = take(ws, o, n, T)
    Cb, o = take(ws, o, n, T)
    dtb, o = take(ws, o, cb, T)
    dAb, o = take(ws, o, cb * n, T)
    dBub, o = take(ws, o, cb * n, T)
    H, o = take(ws, o, cb * n, T)
    h, o = take(ws, o, 1, cb * n)
    return (ub, xb, yb, Bb, Cb, dtb, dAb, dBub, H), h[0, : cb * n]


@njit(**JIT)
def bwd_scratch(ws, cb, n, T, ntiles):
    """Scratch of a backward pass over ntiles tiles, carved from ws (rows of T + ROW_PAD):

    - the tile's inputs, copied: ub, xb, dyb (cb, T): u, delta, dy; Bb, Cb (n, T): B, C;
    - its temporaries: G (cb*n, T): the adjoint states g; gu, gdt (cb, T): du, ddelta;
      dBb, dCb (n, T): dB, dC summed over the block;
    - what the forward sweep keeps for every tile, so that the backward recomputes nothing:
      dts, sgs (ntiles, cb, T): dt and sigmoid(delta + bias); dAs, dBus, Hs (ntiles, cb*n, T):
      dA, dBu and the state before each step, h_{t-1};
    - h, q (cb*n,): the carried state and adjoint.

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
    Hs, o = take3(ws, o, ntiles, cb * n, T)
    h, o = take(ws, o, 1, cb * n)
    q, o = take(ws, o, 1, cb * n)
    inputs = (ub, xb, dyb, Bb, Cb)
    temps = (G, gu, gdt, dBb, dCb)
    kept = (dts, sgs, dAs, dBus, Hs)
    return inputs, temps, kept, h[0, : cb * n], q[0, : cb * n]


@njit(**JIT)
def take3(ws, offset, k, rows, cols):
    """k stacked `take` views: a C-contiguous (k, rows, cols + ROW_PAD) view and the offset
    after it."""
    stride = cols + ROW_PAD
    end = offset + k * rows * stride
    return carve(ws, offset, (k, rows, stride)), end


def workspace(
    cb: int, n: int, T: int, dtype: torch.dtype, backward_tiles: int | None = None
) -> np.ndarray:
    """Scratch for every thread: (threads, S), S the size of `fwd_scratch` or, given
    backward_tiles, of `bwd_scratch` over that many tiles, for blocks of up to cb channels.

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
    return torch.empty(numba.config.NUMBA_NUM_THREADS, size, dtype=dtype).numpy()


@njit(**JIT)
def load_rows(src, r0, t0, t1, dst):
    """dst[j, :t1-t0] = src[r0 + j, t0:t1] for every row j of dst. src (rows, l); dst (rows', T)."""
    for j in range(dst.shape[0]):
        s = src[r0 + j, t0:t1]
        o = dst[j]
        for tt in range(s.shape[0]):
            o[tt] = s[tt]


@njit(**JIT)
def store_rows(src, dst, r0, t0, t1, accumulate):
    """dst[r0 + j, t0:t1] = src[j, :t1-t0] (or +=) for every row j of src (rows', T)."""
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
def _forward_after(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, h0, h1, h2, h3, tl):
    for tt in range(tl):
        h0 = a0[tt] * h0 + b0[tt]
        h1 = a1[tt] * h1 + b1[tt]
        h2 = a2[tt] * h2 + b2[tt]
        h3 = a3[tt] * h3 + b3[tt]
        o0[tt], o1[tt], o2[tt], o3[tt] = h0, h1, h2, h3
    return h0, h1, h2, h3


@njit(**JIT)
def _forward_before(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, h0, h1, h2, h3, tl):
    for tt in range(tl):
        o0[tt], o1[tt], o2[tt], o3[tt] = h0, h1, h2, h3
        h0 = a0[tt] * h0 + b0[tt]
        h1 = a1[tt] * h1 + b1[tt]
        h2 = a2[tt] * h2 + b2[tt]
        h3 = a3[tt] * h3 + b3[tt]
    return h0, h1, h2, h3


@njit(**JIT)
def _reverse_after(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, h0, h1, h2, h3, tl):
    for tt in range(tl - 1, -1, -1):
        h0 = a0[tt] * h0 + b0[tt]
        h1 = a1[tt] * h1 + b1[tt]
        h2 = a2[tt] * h2 + b2[tt]
        h3 = a3[tt] * h3 + b3[tt]
        o0[tt], o1[tt], o2[tt], o3[tt] = h0, h1, h2, h3
    return h0, h1, h2, h3


@njit(**JIT)
def _reverse_before(a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3, h0, h1, h2, h3, tl):
    for tt in range(tl - 1, -1, -1):
        o0[tt], o1[tt], o2[tt], o3[tt] = h0, h1, h2, h3
        h0 = a0[tt] * h0 + b0[tt]
        h1 = a1[tt] * h1 + b1[tt]
        h2 = a2[tt] * h2 + b2[tt]
        h3 = a3[tt] * h3 + b3[tt]
    return h0, h1, h2, h3


@njit(**JIT)
def recurrence(dAb, dBub, H, h, tl, reverse, after):
    """Phase 2, equation (2): h_t = dA_t h_{t-1} + dBu_t for the R = cb*n chains of a tile.

    dAb, dBub (R, T); h (R,): the state before the tile, updated to the state after it.
    H (R, T) receives each step's state: h_t with `after` (what the readout needs), else
    h_{t-1} (what the gradients need). The tile is walked in scratch order or, with `reverse`,
    backwards (the reversed routes of the fused core). Four chains advance per iteration: one
    chain is one FMA per step with a 4-cycle latency, so alone it would leave the FMA units
    idle (eight chains spill registers and measured slower).
    """
    R = h.shape[0]
    for r in range(0, R, 4):
        r1 = min(r + 1, R - 1)  # a short last group repeats its last chain: same values, same place
        r2 = min(r + 2, R - 1)
        r3 = min(r + 3, R - 1)
        chains = (
            dAb[r], dAb[r1], dAb[r2], dAb[r3], dBub[r], dBub[r1], dBub[r2], dBub[r3],
            H[r], H[r1], H[r2], H[r3], h[r], h[r1], h[r2], h[r3],
        )  # fmt: skip
        if reverse and after:
            h0, h1, h2, h3 = _reverse_after(*chains, tl)
        elif reverse:
            h0, h1, h2, h3 = _reverse_before(*chains, tl)
        elif after:
            h0, h1, h2, h3 = _forward_after(*chains, tl)
        else:
            h0, h1, h2, h3 = _forward_before(*chains, tl)
        h[r], h[r1], h[r2], h[r3] = h0, h1, h2, h3


@njit(**JIT)
def readout_row(u, ur, uc, C, Cr, Cc, H, D, has_D, tl, j, out, accumulate):
    """Channel j of phase 3, equation (3): out[:tl] = y_t = sum_n C_tn h_tn + D u_t (or +=),
    SIMD along the tile. Rows u[ur + j, uc:uc+tl] and C[Cr + m, Cc:Cc+tl] as in `discretize`;
    H (cb*n, T) the states h_t from `recurrence(after=True)`; D (cb,)."""
    n = H.shape[0] // D.shape[0]
    uj = u[ur + j, uc : uc + tl]
    Cm = C[Cr, Cc : Cc + tl]
    hm = H[j * n]
    Dj = D[j] if has_D else zero_of(D)
    if accumulate:
        for tt in range(tl):
            out[tt] += Dj * uj[tt] + Cm[tt] * hm[tt]
    else:
        for tt in range(tl):
            out[tt] = Dj * uj[tt] + Cm[tt] * hm[tt]
    for m in range(1, n):
        Cm = C[Cr + m, Cc : Cc + tl]
        hm = H[j * n + m]
        for tt in range(tl):
            out[tt] += Cm[tt] * hm[tt]


@njit(**JIT)
def readout(u, ur, uc, C, Cr, Cc, H, D, has_D, tl, y, yr, yc, accumulate):
    """Phase 3 for the cb channels of the tile: writes y[yr + j, yc:yc+tl] or, with
    `accumulate`, adds to it (the fused SS2D core sums its four routes into one map)."""
    for j in range(D.shape[0]):
        readout_row(u, ur, uc, C, Cr, Cc, H, D, has_D, tl, j, y[yr + j, yc : yc + tl], accumulate)


@njit(**JIT)
def readout_streaming(u, ur, uc, C, Cr, Cc, H, D, has_D, tl, y, yr, yc, row):
    """Phase 3 into an output that nothing reads soon: each channel's y goes to the scratch row
    `row` (T,), which stays in L1, then to y[yr + j, yc:yc+tl] by `stream_row`, so that y's
    lines are written without first being read from memory."""
    for j in range(D.shape[0]):
        readout_row(u, ur, uc, C, Cr, Cc, H, D, has_D, tl, j, row, False)
        stream_row(row, y[yr + j, yc : yc + tl])


@njit(**JIT)
def adjoint(G, dAb, q, tl, reverse):
    """Equation (4), against the route's direction, for the R = cb*n chains of a tile:
    g_t = dy_t C_t + q, q <- dA_t g_t, where q carries dA_{t+1} g_{t+1}.

    G (R, T) holds dy_t C_tn on entry and g_tn on exit; dAb (R, T); q (R,) comes in from the
    tile after and leaves as dA_{t0} g_{t0} (after a route's first step: d initial_state).
    `reverse` as in `recurrence`: the adjoint then walks the scratch forwards. Four chains per
    iteration, as in `recurrence` (reading dy and C here instead of G measured slower: five
    streams per chain spill registers).
    """
    R = q.shape[0]
    for r in range(0, R, 4):
        r1 = min(r + 1, R - 1)
        r2 = min(r + 2, R - 1)
        r3 = min(r + 3, R - 1)
        g0, g1, g2, g3 = G[r], G[r1], G[r2], G[r3]
        a0, a1, a2, a3 = dAb[r], dAb[r1], dAb[r2], dAb[r3]
        q0, q1, q2, q3 = q[r], q[r1], q[r2], q[r3]
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
def gradients(
    inputs, temps, dtb, sgb, dAb, dBub, Hp, A, D, softplus, has_D, tl, dA_acc, dD_acc, dbias_acc
):
    """Gradients of one tile from its states h_{t-1} (Hp) and adjoint states g (G), SIMD along
    the tile. With h_t = dA_t h_{t-1} + dBu_t and j running over the block's channels:

        dC_tn    = sum_j dy_t h_tn               dB_tn = sum_j g_tn dt_t u_t
        du_t     = D dy_t + sum_n g_tn dt_t B_tn
        ddt_t    = sum_n g_tn (dA_tn A_n h_{t-1,n} + B_tn u_t)
        ddelta_t = ddt_t sigmoid(x_t)            (ddt_t without softplus)
        dA_n    += sum_t g_tn dA_tn h_{t-1,n} dt_t
        dD      += sum_t dy_t u_t                dbias += sum_t ddelta_t

    inputs, temps: `bwd_scratch`'s (ub, dyb, Bb and G filled); dtb, sgb (cb, T), dAb, dBub,
    Hp (cb*n, T): the tile's kept discretization and states. Writes gu, gdt (cb, T) (du,
    ddelta) and dBb, dCb (n, T); adds into dA_acc (cb, n), dD_acc and dbias_acc (cb,).
    """
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
            hp = Hp[r]
            Bm = Bb[m]
            dBm = dBb[m]
            dCm = dCb[m]
            Ajm = A[j, m]
            for tt in range(tl):
                dCm[tt] += dyj[tt] * (a[tt] * hp[tt] + bu[tt])
            for tt in range(tl):
                dBm[tt] += g[tt] * dtj[tt] * uj[tt]
            for tt in range(tl):
                guj[tt] += g[tt] * dtj[tt] * Bm[tt]
            sA = z
            for tt in range(tl):
                w = g[tt] * a[tt] * hp[tt]
                gdtj[tt] += w * Ajm + g[tt] * Bm[tt] * uj[tt]
                sA += w * dtj[tt]
            dA_acc[j, m] += sA
        sbias = z
        sD = z
        if softplus:
            sgj = sgb[j]
            for tt in range(tl):
                v = gdtj[tt] * sgj[tt]
                gdtj[tt] = v
                sbias += v
                sD += dyj[tt] * uj[tt]
        else:
            for tt in range(tl):
                sbias += gdtj[tt]
                sD += dyj[tt] * uj[tt]
        dbias_acc[j] += sbias
        dD_acc[j] += sD


@njit(**JIT)
def sweep_tile(u, ur, uc, x, xr, xc, B, Br, Bc, A, bias, softplus, tl, reverse, kept, ti, h):
    """The backward's forward sweep over tile ti: discretize into tile ti's kept arrays
    (`bwd_scratch`), and advance the state h (cb*n,) over the tile, keeping h_{t-1} at every
    step. Sources as `discretize`."""
    dts, sgs, dAs, dBus, Hs = kept
    discretize(
        u, ur, uc, x, xr, xc, B, Br, Bc, A, bias, softplus, tl, dts[ti], dAs[ti], dBus[ti],
        sgs[ti], True,
    )  # fmt: skip
    recurrence(dAs[ti], dBus[ti], Hs[ti], h, tl, reverse, False)


@njit(**JIT)
def tile_bwd(
    inputs, temps, kept, ti, A, D, softplus, has_D, q, tl, reverse, dA_acc, dD_acc, dbias_acc
):
    """Backward of tile ti, whose ub, dyb, Bb, Cb (inputs) the caller has filled and whose
    discretization and states the sweep kept. q (cb*n,): the adjoint carry, updated to the
    tile's start. Writes gu, gdt, dBb, dCb (temps); adds into the parameter accumulators (see
    `gradients`)."""
    ub, xb, dyb, Bb, Cb = inputs
    G, gu, gdt, dBb, dCb = temps
    dts, sgs, dAs, dBus, Hs = kept
    cb = ub.shape[0]
    n = Bb.shape[0]
    for j in range(cb):
        dyj = dyb[j]
        for m in range(n):
            g = G[j * n + m]
            Cm = Cb[m]
            for tt in range(tl):
                g[tt] = dyj[tt] * Cm[tt]
    adjoint(G, dAs[ti], q, tl, reverse)
    gradients(
        inputs, temps, dts[ti], sgs[ti], dAs[ti], dBus[ti], Hs[ti], A, D, softplus, has_D, tl,
        dA_acc, dD_acc, dbias_acc,
    )  # fmt: skip


@njit(**JIT)
def load_state(src, bi, c0, cb, n, dst):
    """dst[j*n + m] = src[bi, c0 + j, m]: a block's states (b, channels, n) -> flat (cb*n,)."""
    for j in range(cb):
        for m in range(n):
            dst[j * n + m] = src[bi, c0 + j, m]


@njit(**JIT)
def store_state(src, dst, bi, c0, cb, n):
    """dst[bi, c0 + j, m] = src[j*n + m], the inverse of `load_state`."""
    for j in range(cb):
        for m in range(n):
            dst[bi, c0 + j, m] = src[j * n + m]


# ------------------------------------------------------------------------------------------------
# Launchers: the one prange, over work items (batch, route, channel block).
# ------------------------------------------------------------------------------------------------


@njit(**PARALLEL_JIT)
def _selective_scan_fwd_kernel(
    u, delta, A, B, C, D, bias, h0, softplus, has_D, block, tile, work, y, h_last
):
    """Forward selective scan, equations (1)-(3).

    u, delta, y (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, bias (k*d,); h0, h_last (b, k*d, n);
    all C-contiguous, one float dtype; work (threads, S) scratch (`workspace`). The prange runs
    over b*k*nblk items: item -> batch bi, route ki, channels c0:c1 (at most `block` of route
    ki's d channels); the item walks l in tiles of `tile` steps, reading its rows of u, delta,
    B, C in place and carrying its cb*n states from tile to tile in its thread's scratch.
    """
    b, kd, l = u.shape
    k = B.shape[1]
    n = B.shape[2]
    d = kd // k
    nblk = (d + block - 1) // block
    for item in prange(b * k * nblk):
        bi = item // (k * nblk)
        ki = (item // nblk) % k
        c0 = ki * d + (item % nblk) * block
        c1 = min(c0 + block, (ki + 1) * d)
        cb = c1 - c0
        ws = work[numba.get_thread_id()]  # (S,)
        (_, _, yb, _, _, dtb, dAb, dBub, H), h = fwd_scratch(ws, cb, n, tile)
        load_state(h0, bi, c0, cb, n, h)
        Ab, Db, biasb = A[c0:c1], D[c0:c1], bias[c0:c1]
        us, xs, Bs, Cs, ys = u[bi], delta[bi], B[bi, ki], C[bi, ki], y[bi]  # (k*d, l) and (n, l)
        for t0 in range(0, l, tile):
            tl = min(tile, l - t0)
            discretize(
                us, c0, t0, xs, c0, t0, Bs, 0, t0, Ab, biasb, softplus, tl, dtb, dAb, dBub, dtb,
                False,
            )  # fmt: skip
            recurrence(dAb, dBub, H, h, tl, False, True)
            readout_streaming(us, c0, t0, Cs, 0, t0, H, Db, has_D, tl, ys, c0, t0, yb[0])
        store_state(h, h_last, bi, c0, cb, n)


@njit(**PARALLEL_JIT)
def _selective_scan_bwd_kernel(
    u, delta, A, B, C, D, bias, h0, dy, dlast, softplus, has_D, block, tile, groups, work,
    du, ddelta, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0,
):  # fmt: skip
    """Backward selective scan, recomputing the states (equation (4) and `gradients`).

    Inputs as `_selective_scan_fwd_kernel`, plus dy (b, k*d, l) and dlast (b, k*d, n) (zeros
    when the last state is unused); work (threads, S) scratch for ceil(l / tile) kept tiles.
    Outputs: du, ddelta (b, k*d, l); dh0 (b, k*d, n); partial sums that the caller reduces:
    dA_part (b, k*d, n), dD_part, dbias_part (b, k*d) (summed over b), dB_part, dC_part
    (b, k, groups, n, l), zero on entry (summed over the groups).

    The prange runs over b*k*groups items: item -> batch bi, route ki, group g, which takes
    the channel blocks g, g+groups, ... of route ki one after the other and adds their dB, dC
    into its own partial row. `groups` is fixed, not the thread count, so the sums do not
    depend on how many threads run, and the partials stay (b, k, groups, n, l): never a
    (b, k*d, l, n) tensor even when a block is one channel (n >= chains). Per block, a forward
    sweep keeps every tile's discretization and states (`sweep_tile`), then the tiles run last
    to first (`tile_bwd`).
    """
    b, kd, l = u.shape
    k = B.shape[1]
    n = B.shape[2]
    d = kd // k
    nblk = (d + block - 1) // block
    ntiles = (l + tile - 1) // tile
    for item in prange(b * k * groups):
        bi = item // (k * groups)
        ki = (item // groups) % k
        g = item % groups
        us, xs, dys, Bs, Cs = u[bi], delta[bi], dy[bi], B[bi, ki], C[bi, ki]  # (k*d | n, l)
        dBs, dCs = dB_part[bi, ki, g], dC_part[bi, ki, g]  # (n, l)
        ws = work[numba.get_thread_id()]  # (S,)
        for blk in range(g, nblk, groups):
            c0 = ki * d + blk * block
            c1 = min(c0 + block, (ki + 1) * d)
            cb = c1 - c0
            inputs, temps, kept, h, q = bwd_scratch(ws, cb, n, tile, ntiles)
            ub, xb, dyb, Bb, Cb = inputs
            G, gu, gdt, dBb, dCb = temps
            Ab, Db, biasb = A[c0:c1], D[c0:c1], bias[c0:c1]
            load_state(h0, bi, c0, cb, n, h)
            load_state(dlast, bi, c0, cb, n, q)
            for ti in range(ntiles):
                t0 = ti * tile
                sweep_tile(
                    us, c0, t0, xs, c0, t0, Bs, 0, t0, Ab, biasb, softplus, min(tile, l - t0),
                    False, kept, ti, h,
                )  # fmt: skip
            for ti in range(ntiles - 1, -1, -1):
                t0 = ti * tile
                t1 = min(t0 + tile, l)
                load_rows(us, c0, t0, t1, ub)
                load_rows(Bs, 0, t0, t1, Bb)
                load_rows(Cs, 0, t0, t1, Cb)
                load_rows(dys, c0, t0, t1, dyb)
                tile_bwd(
                    inputs, temps, kept, ti, Ab, Db, softplus, has_D, q, t1 - t0, False,
                    dA_part[bi, c0:c1], dD_part[bi, c0:c1], dbias_part[bi, c0:c1],
                )  # fmt: skip
                stream_rows(gu, du[bi], c0, t0, t1)
                stream_rows(gdt, ddelta[bi], c0, t0, t1)
                store_rows(dBb, dBs, 0, t0, t1, True)
                store_rows(dCb, dCs, 0, t0, t1, True)
            store_state(q, dh0, bi, c0, cb, n)


# ------------------------------------------------------------------------------------------------
# Tensor-level entry points, called by the `vmamba::selective_scan_fwd/bwd` operators' CPU kernels
# (vmamba_fast/ops.py). They validate, convert to the computation dtype and call the kernels.
# ------------------------------------------------------------------------------------------------


def check_cpu(fn: str, **tensors: object) -> None:
    """Raise if any tensor is off the CPU: the Numba kernels read host memory only. (Arguments
    that are not tensors are left to the type checks that follow.)"""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device.type != "cpu":
            raise BackendUnavailableError(
                f"{fn}: backend 'numba' runs on CPU tensors, but `{name}` is on {t.device}; "
                "pass backend='triton' for CUDA tensors, or backend='ref'"
            )


def as_kernel_array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A C-contiguous NumPy view of `t` in `dtype`, copying only when a cast or a re-layout is
    needed (float16/bfloat16 -> float32; non-contiguous -> contiguous)."""
    return t.detach().to(dtype).contiguous().numpy()


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def partial_sums(shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """A zeroed NumPy buffer for the kernels' partial sums, reduced afterwards with NumPy. Both
    run on the calling thread: torch would fill and reduce these (small) buffers in parallel,
    and on a busy machine every parallel region can wait a scheduler slice for its second
    thread."""
    return np.zeros(shape, _NUMPY_DTYPE[dtype])


def time_tile(l: int) -> int:
    """Steps per tile: the configured tile, or the whole sequence when it is shorter."""
    return max(1, min(active().time_tile, l))


def channel_block(n: int) -> int:
    """Channels per block: enough that cb*n >= config.chains recurrences run side by side."""
    return max(1, active().chains // n)


def _kernel_args(u, delta, A, B, C, D, delta_bias, initial_state):
    dtype = compute_dtype(u.dtype)
    b, kd, _ = u.shape
    n = B.shape[2]
    arrays = [as_kernel_array(t, dtype) for t in (u, delta, A, B, C)]
    zeros = partial_sums((kd,), dtype)
    D_ = zeros if D is None else as_kernel_array(D, dtype)
    bias_ = zeros if delta_bias is None else as_kernel_array(delta_bias, dtype)
    h0 = (
        partial_sums((b, kd, n), dtype)
        if initial_state is None
        else as_kernel_array(initial_state, dtype)
    )
    return dtype, (*arrays, D_, bias_, h0)


def selective_scan_fwd_cpu(
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
    """Forward on CPU tensors -> (y (b, k*d, l), h_last (b, k*d, n)) in the computation dtype."""
    fn = "vmamba::selective_scan_fwd"
    check_cpu(fn, u=u)
    check_selective_scan_args(fn, u, delta, A, B, C, D, delta_bias, initial_state)
    dtype, args = _kernel_args(u, delta, A, B, C, D, delta_bias, initial_state)
    b, kd, l = u.shape
    n = B.shape[2]
    y = torch.empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    h_last = torch.empty(b, kd, n, dtype=dtype)  # (b, k*d, n)
    block, tile = channel_block(n), time_tile(l)
    work = workspace(block, n, tile, dtype)  # (threads, S)
    with threads_for(u.numel()):
        _selective_scan_fwd_kernel(
            *args, bool(delta_softplus), D is not None, block, tile, work, y.numpy(), h_last.numpy()
        )
    return y, h_last


def selective_scan_bwd_cpu(
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
    """Backward on CPU tensors -> (du, ddelta, dA, dB, dC, dD, ddelta_bias, dinitial_state),
    each in the dtype of its input (the computation dtype for an input that is None: the
    gradient with respect to a zero D, delta_bias or initial state)."""
    fn = "vmamba::selective_scan_bwd"
    check_cpu(fn, u=u, dy=dy, dlast=dlast)
    b, k, d, l, n = check_selective_scan_args(fn, u, delta, A, B, C, D, delta_bias, initial_state)
    dtype, args = _kernel_args(u, delta, A, B, C, D, delta_bias, initial_state)
    kd = k * d
    if tuple(dy.shape) != (b, kd, l):
        raise ValueError(f"{fn}: `dy` must have shape {(b, kd, l)}, got {tuple(dy.shape)}")
    if dlast is not None and tuple(dlast.shape) != (b, kd, n):
        raise ValueError(f"{fn}: `dlast` must have shape {(b, kd, n)}, got {tuple(dlast.shape)}")
    dy_ = as_kernel_array(dy, dtype)
    dlast_ = partial_sums((b, kd, n), dtype) if dlast is None else as_kernel_array(dlast, dtype)
    config = active()
    block = channel_block(n)
    groups = min((d + block - 1) // block, config.reduction_groups)
    du = torch.empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    ddelta = torch.empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    dA_part = partial_sums((b, kd, n), dtype)  # (b, k*d, n)
    dB_part = partial_sums((b, k, groups, n, l), dtype)  # (b, k, groups, n, l)
    dC_part = partial_sums((b, k, groups, n, l), dtype)  # (b, k, groups, n, l)
    dD_part = partial_sums((b, kd), dtype)  # (b, k*d)
    dbias_part = partial_sums((b, kd), dtype)  # (b, k*d)
    dh0 = torch.empty(b, kd, n, dtype=dtype)  # (b, k*d, n)
    tile = time_tile(l)
    work = workspace(block, n, tile, dtype, backward_tiles=(l + tile - 1) // tile)
    with threads_for(u.numel()):
        _selective_scan_bwd_kernel(
            *args, dy_, dlast_, bool(delta_softplus), D is not None, block, tile, groups, work,
            du.numpy(), ddelta.numpy(), dA_part, dB_part, dC_part, dD_part, dbias_part,
            dh0.numpy(),
        )  # fmt: skip
    grads = (
        du,
        ddelta,
        torch.from_numpy(dA_part.sum(0)),  # (k*d, n)
        torch.from_numpy(dB_part.sum(2)),  # (b, k, n, l)
        torch.from_numpy(dC_part.sum(2)),  # (b, k, n, l)
        torch.from_numpy(dD_part.sum(0)),  # (k*d,)
        torch.from_numpy(dbias_part.sum(0)),  # (k*d,)
        dh0,
    )
    like = (u, delta, A, B, C, D, delta_bias, initial_state)
    return tuple(g if t is None else g.to(t.dtype) for g, t in zip(grads, like, strict=True))


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
    """`vmamba_ref.selective_scan` on the Numba backend: same arguments, layouts and dtype rule.

    u, delta (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, delta_bias (k*d,); initial_state
    (b, k*d, n) -> y (b, k*d, l) in float32 (float64 for float64 u), and with
    `return_last_state` also h_{l-1} (b, k*d, n). Differentiable in every tensor argument,
    initial_state included, through the `vmamba::selective_scan_fwd` operator.
    """
    if not torch.compiler.is_compiling():
        check_cpu("selective_scan", u=u, initial_state=initial_state)
        check_selective_scan_args("selective_scan", u, delta, A, B, C, D, delta_bias, initial_state)
    y, last_state = ops.selective_scan_fwd(
        u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
    )
    return (y, last_state) if return_last_state else y
