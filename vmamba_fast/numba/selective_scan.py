"""The selective scan (S6) on the CPU: Numba kernels, forward and backward, that stream the
recurrence.

Same function, signature, layouts and dtype rule as `vmamba_ref.selective_scan`, the oracle
(Mamba section 3.2, algorithm 2; VMamba section 3.2). For one channel of route k, at step t:

    (1a) x_t   = delta_t + delta_bias                 dt_t = softplus(x_t)   (or x_t)
    (1b) dA_tn = exp(dt_t * A_n)                      dBu_tn = dt_t * B_tn * u_t
    (2)  h_tn  = dA_tn * h_{t-1,n} + dBu_tn           h_{-1} = initial_state or 0
    (3)  y_t   = sum_n C_tn h_tn + D u_t

h is the paper's state; in code it is `state`, since `h` is the grid height.

Kernel design. The outer, parallel loop (`prange`) runs over work items (batch bi, route ki,
block of channels ch0:ch1 of that route): every item owns its outputs, and sums shared by items
(dB, dC) go to a fixed number of partial buffers, so results do not depend on the thread count.
An item walks time in tiles of `config.time_tile` steps; each tile has three phases, chosen so
that everything expensive runs in SIMD over contiguous memory:

    phase 1, `discretize`  (1a, 1b) softplus and exp along time, reading the tile's rows in
                           place: one vector lane per time step
    phase 2, `recurrence`  (2) the only sequential part: cb*n >= 16 independent chains
                           advanced together, so that their FMA latencies overlap
    phase 3, `readout`     (3) along time again, SIMD

The phases and the backward's tile routines live in `tiles.py`, which the fused SS2D
core (`ss2d_core.py`) shares; this file holds the scan's launchers, which cut the problem into
work items, and its tensor-level entry points. Each thread carves its scratch out of a per-call
workspace (`tiles.workspace`): the kernels allocate nothing themselves.

The backward pass recomputes rather than storing anything across the two operators: a forward
sweep over the item's tiles keeps, per tile, dt, sigmoid(delta + bias), dA, dBu and h_{t-1}
(O(chains * l) numbers per thread), then the tiles run last to first through the adjoint
recurrence

    (4)  g_tn = dy_t C_tn + dA_{t+1,n} g_{t+1,n}       g at t = l-1 starts from d(last state)

from which every gradient is a sum of products along time (`tiles.gradients`). Memory stays
O(b*k*d*l): no (b, k*d, l, n) tensor is ever allocated, and every transcendental is evaluated
once per pass.

Measured costs at VMamba-T stage 1 (b=8, k*d=384, n=1, l=3136: one tile per route), each
phase timed alone on 2 cores: discretize 4.7 ms (softplus, two exps and a log1p per element,
reading u and delta from memory), recurrence 1.5 ms, readout 2.0 ms with plain stores, of
which streaming y past the caches (`memory.stream_row`) saves about 0.5 ms. The compute floor is
2 + n transcendental evaluations per element (softplus's exp and log1p, n exps for dA): about
4.3 ms here. benchmarks/bench_cpu.py measures the kernels against the machine's floors.

Arithmetic (`numerics.py`): float32 inputs run in float32 with a polynomial `exp` and `log1p`
that LLVM vectorizes (libm's scalar `expf` is 10x slower in a loop), and with
`exp_nonpositive_`, which drops exp's overflow path, wherever the argument cannot be positive:
softplus's exp(-|x|), and dA = exp(dt * A) in channels with A <= 0 (every VMamba model); float64
inputs run in float64 with libm, to match the reference to 1e-9. float16/bfloat16 inputs are converted to float32 before
the kernel (Numba has no bfloat16), as the reference does.

Official implementation: `selective_scan_fwd/bwd` in VMamba's `csms6s` CUDA kernels (which keep
chunk states in shared memory the same way). Deviations: no gate z, an initial state and the
last state are supported, and the gradient with respect to the initial state is returned.
"""

from __future__ import annotations

import numba
import torch
from numba import njit, prange

from vmamba_fast import ops
from vmamba_fast.numba.config import JIT, PARALLEL_JIT, active, launch, threads_for
from vmamba_fast.numba.memory import as_kernel_array, check_cpu, partial_sums, reaches_cpu_kernel
from vmamba_fast.numba.tiles import (
    bwd_scratch,
    channel_block,
    discretize,
    fwd_scratch,
    load_rows,
    readout_streaming,
    recurrence,
    store_rows,
    stream_rows,
    sweep_tile,
    tile_bwd,
    time_tile,
    workspace,
)
from vmamba_ref.contract import (
    check_selective_scan_args,
    compute_dtype,
    is_kernel_call,
    scan_any_layout,
)

# ------------------------------------------------------------------------------------------------
# A block's states: the initial state in, the last state out.
# ------------------------------------------------------------------------------------------------


@njit(**JIT)
def load_state(src, bi, ch0, cb, n, dst):
    """dst[j*n + m] = src[bi, ch0 + j, m]: a block's states (b, channels, n) -> flat (cb*n,)."""
    for j in range(cb):
        for m in range(n):
            dst[j * n + m] = src[bi, ch0 + j, m]


@njit(**JIT)
def store_state(src, dst, bi, ch0, cb, n):
    """dst[bi, ch0 + j, m] = src[j*n + m], the inverse of `load_state`."""
    for j in range(cb):
        for m in range(n):
            dst[bi, ch0 + j, m] = src[j * n + m]


# ------------------------------------------------------------------------------------------------
# Launchers: the one prange, over work items (batch, route, channel block).
# ------------------------------------------------------------------------------------------------


@njit(**PARALLEL_JIT)
def _selective_scan_fwd_kernel(
    u, delta, A, B, C, D, bias, state0, softplus, has_D, block, tile, work, y, last_state
):
    """Forward selective scan, equations (1)-(3).

    u, delta, y (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, bias (k*d,); state0 (the initial
    state), last_state (b, k*d, n); all C-contiguous, one float dtype; work (threads, S) scratch
    (`workspace`). The prange runs
    over b*k*nblk items: item -> batch bi, route ki, channels ch0:ch1 (at most `block` of route
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
        ch0 = ki * d + (item % nblk) * block
        ch1 = min(ch0 + block, (ki + 1) * d)
        cb = ch1 - ch0
        ws = work[numba.get_thread_id()]  # (S,)
        (_, _, yb, _, _, dtb, dAb, dBub, states), state = fwd_scratch(ws, cb, n, tile)
        load_state(state0, bi, ch0, cb, n, state)
        Ab, Db, biasb = A[ch0:ch1], D[ch0:ch1], bias[ch0:ch1]
        us, xs, Bs, Cs, ys = u[bi], delta[bi], B[bi, ki], C[bi, ki], y[bi]  # (k*d, l) and (n, l)
        for t0 in range(0, l, tile):
            tl = min(tile, l - t0)
            discretize(
                us, ch0, t0, xs, ch0, t0, Bs, 0, t0, Ab, biasb, softplus, tl, dtb, dAb, dBub, dtb,
                False,
            )  # fmt: skip
            recurrence(dAb, dBub, states, state, tl, False, True)
            readout_streaming(us, ch0, t0, Cs, 0, t0, states, Db, has_D, tl, ys, ch0, t0, yb[0])
        store_state(state, last_state, bi, ch0, cb, n)


@njit(**PARALLEL_JIT)
def _selective_scan_bwd_kernel(
    u, delta, A, B, C, D, bias, state0, dy, dlast, softplus, has_D, block, tile, groups, work,
    du, ddelta, dA_part, dB_part, dC_part, dD_part, dbias_part, dstate0,
):  # fmt: skip
    """Backward selective scan, recomputing the states (equation (4) and `tiles.gradients`).

    Inputs as `_selective_scan_fwd_kernel`, plus dy (b, k*d, l) and dlast (b, k*d, n) (zeros
    when the last state is unused); work (threads, S) scratch for ceil(l / tile) kept tiles.
    Outputs: du, ddelta (b, k*d, l); dstate0 (b, k*d, n), the initial state's gradient;
    partial sums that the caller reduces: dA_part (b, k*d, n), dD_part, dbias_part (b, k*d)
    (summed over b; float64, as their sums over time), dB_part, dC_part (b, k, groups, n, l),
    zero on entry (summed over the groups).

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
            ch0 = ki * d + blk * block
            ch1 = min(ch0 + block, (ki + 1) * d)
            cb = ch1 - ch0
            inputs, temps, kept, state, q = bwd_scratch(ws, cb, n, tile, ntiles)
            ub, xb, dyb, Bb, Cb = inputs
            G, gu, gdt, dBb, dCb = temps
            Ab, Db, biasb = A[ch0:ch1], D[ch0:ch1], bias[ch0:ch1]
            load_state(state0, bi, ch0, cb, n, state)
            load_state(dlast, bi, ch0, cb, n, q)
            for ti in range(ntiles):
                t0 = ti * tile
                sweep_tile(
                    us, ch0, t0, xs, ch0, t0, Bs, 0, t0, Ab, biasb, softplus, min(tile, l - t0),
                    False, kept, ti, state, 0,
                )  # fmt: skip
            for ti in range(ntiles - 1, -1, -1):
                t0 = ti * tile
                t1 = min(t0 + tile, l)
                load_rows(us, ch0, t0, t1, ub)
                load_rows(Bs, 0, t0, t1, Bb)
                load_rows(Cs, 0, t0, t1, Cb)
                load_rows(dys, ch0, t0, t1, dyb)
                tile_bwd(
                    inputs, temps, kept, ti, Ab, Db, softplus, has_D, q, t1 - t0, False,
                    dA_part[bi, ch0:ch1], dD_part[bi, ch0:ch1], dbias_part[bi, ch0:ch1], 0,
                )  # fmt: skip
                stream_rows(gu, du[bi], ch0, t0, t1)
                stream_rows(gdt, ddelta[bi], ch0, t0, t1)
                store_rows(dBb, dBs, 0, t0, t1, True)
                store_rows(dCb, dCs, 0, t0, t1, True)
            store_state(q, dstate0, bi, ch0, cb, n)


# ------------------------------------------------------------------------------------------------
# Tensor-level entry points. `selective_scan_fwd_cpu` and `selective_scan_bwd_cpu` are the CPU
# kernels of the `vmamba::selective_scan_fwd/bwd` operators (vmamba_fast/ops.py): they convert
# to the computation dtype and call the launchers. The forward one validates the call, once for
# every caller (`selective_scan`, torch.compile'd graphs, direct `torch.ops.vmamba` calls).
# ------------------------------------------------------------------------------------------------


def _check(u, delta, A, B, C, D, delta_bias, initial_state) -> tuple[int, int, int, int, int]:
    """The validation of a scan call, in the reference's words (its errors name the public
    function, `selective_scan`): the device, then the contract's checks. Returns (b, k, d, l, n)."""
    check_cpu("selective_scan", u=u, initial_state=initial_state)
    return check_selective_scan_args(
        "selective_scan", u, delta, A, B, C, D, delta_bias, initial_state
    )


def _kernel_args(u, delta, A, B, C, D, delta_bias, initial_state):
    dtype = compute_dtype(u.dtype)
    b, kd, _ = u.shape
    n = B.shape[2]
    arrays = [as_kernel_array(t, dtype) for t in (u, delta, A, B, C)]
    zeros = partial_sums((kd,), dtype)
    D_ = zeros if D is None else as_kernel_array(D, dtype)
    bias_ = zeros if delta_bias is None else as_kernel_array(delta_bias, dtype)
    state0 = (
        partial_sums((b, kd, n), dtype)
        if initial_state is None
        else as_kernel_array(initial_state, dtype)
    )
    return dtype, (*arrays, D_, bias_, state0)


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
    """Forward on CPU tensors -> (y (b, k*d, l), last_state (b, k*d, n)) in the computation
    dtype. Validates its arguments: the one check of every forward call."""
    b, k, d, l, n = _check(u, delta, A, B, C, D, delta_bias, initial_state)
    dtype, args = _kernel_args(u, delta, A, B, C, D, delta_bias, initial_state)
    kd = k * d
    y = torch.empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    last_state = torch.empty(b, kd, n, dtype=dtype)  # (b, k*d, n)
    block, tile = channel_block(n), time_tile(l)
    work = workspace(block, n, tile, dtype)  # (threads, S)
    with threads_for(u.numel()):
        launch(_selective_scan_fwd_kernel)(
            *args, bool(delta_softplus), D is not None, block, tile, work, y.numpy(),
            last_state.numpy(),
        )  # fmt: skip
    return y, last_state


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
    gradient with respect to a zero D, delta_bias or initial state).

    The inputs are the forward's, which its kernel validated (the autograd formula passes the
    saved ones), so only what is new is checked: every tensor on the CPU (a direct call with
    another device's tensors would otherwise fail inside NumPy) and the shapes of dy and dlast.
    """
    fn = "vmamba::selective_scan_bwd"
    check_cpu(
        fn, dy=dy, dlast=dlast, u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias,
        initial_state=initial_state,
    )  # fmt: skip
    b, kd, l = u.shape
    _, k, n, _ = B.shape
    d = kd // k
    if tuple(dy.shape) != (b, kd, l):
        raise ValueError(f"{fn}: `dy` must have shape {(b, kd, l)}, got {tuple(dy.shape)}")
    if dlast is not None and tuple(dlast.shape) != (b, kd, n):
        raise ValueError(f"{fn}: `dlast` must have shape {(b, kd, n)}, got {tuple(dlast.shape)}")
    dtype, args = _kernel_args(u, delta, A, B, C, D, delta_bias, initial_state)
    dy_ = as_kernel_array(dy, dtype)
    dlast_ = partial_sums((b, kd, n), dtype) if dlast is None else as_kernel_array(dlast, dtype)
    config = active()
    block = channel_block(n)
    groups = min((d + block - 1) // block, config.reduction_groups)
    du = torch.empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    ddelta = torch.empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    dA_part = partial_sums((b, kd, n), torch.float64)  # (b, k*d, n)
    dB_part = partial_sums((b, k, groups, n, l), dtype)  # (b, k, groups, n, l)
    dC_part = partial_sums((b, k, groups, n, l), dtype)  # (b, k, groups, n, l)
    dD_part = partial_sums((b, kd), torch.float64)  # (b, k*d)
    dbias_part = partial_sums((b, kd), torch.float64)  # (b, k*d)
    dstate0 = torch.empty(b, kd, n, dtype=dtype)  # (b, k*d, n)
    tile = time_tile(l)
    work = workspace(block, n, tile, dtype, backward_tiles=(l + tile - 1) // tile)
    with threads_for(u.numel()):
        launch(_selective_scan_bwd_kernel)(
            *args, dy_, dlast_, bool(delta_softplus), D is not None, block, tile, groups, work,
            du.numpy(), ddelta.numpy(), dA_part, dB_part, dC_part, dD_part, dbias_part,
            dstate0.numpy(),
        )  # fmt: skip
    grads = (
        du,
        ddelta,
        torch.from_numpy(dA_part.sum(0)).to(dtype),  # (k*d, n)
        torch.from_numpy(dB_part.sum(2)),  # (b, k, n, l)
        torch.from_numpy(dC_part.sum(2)),  # (b, k, n, l)
        torch.from_numpy(dD_part.sum(0)).to(dtype),  # (k*d,)
        torch.from_numpy(dbias_part.sum(0)).to(dtype),  # (k*d,)
        dstate0,
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
    z: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`vmamba_ref.selective_scan` on the Numba backend: same arguments, layouts and dtype rule.

    u, delta, z (b, k*d, l); A (k*d, n); B, C (b, k, n, l), or mamba_ssm's constant (k*d, n) or
    variable (b, n, l); D, delta_bias (k*d,); initial_state (b, k*d, n) -> y (b, k*d, l) in
    float32 (float64 for float64 u), times silu(z) with the gate z, and with `return_last_state`
    also h_{l-1} (b, k*d, n). Differentiable in every tensor argument, initial_state included,
    through the `vmamba::selective_scan_fwd` operator, whose CPU kernel validates the arguments.
    A call that cannot reach that kernel (a tensor off the CPU, an argument that is not a tensor)
    raises here instead, with the same checks. Other layouts, the gate and an empty u go through
    the contract's `scan_any_layout`: checked there, B and C mapped onto the grouped layout, the
    gate applied in torch.
    """
    if not is_kernel_call(u, B, C, z):
        return scan_any_layout(
            selective_scan, u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state,
            return_last_state, z,
        )  # fmt: skip
    if not torch.compiler.is_compiling() and not reaches_cpu_kernel(
        (u, delta, A, B, C), (D, delta_bias, initial_state)
    ):
        _check(u, delta, A, B, C, D, delta_bias, initial_state)  # raises
    y, last_state = ops.selective_scan_fwd(
        u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
    )
    return (y, last_state) if return_last_state else y
