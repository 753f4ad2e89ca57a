"""VMamba's scan operators as PyTorch custom operators, namespace `vmamba`.

One operator per kernel, so that `torch.compile` traces each as a single node, `opcheck` can test
it, and `torch.utils.flop_counter` counts it:

| operator                        | returns                                               |
|---------------------------------|-------------------------------------------------------|
| `vmamba::cross_scan(x)`          | xs (b, k=4, d, l), x's dtype                           |
| `vmamba::cross_merge(ys)`        | y (b, d, h, w), ys's dtype                             |
| `vmamba::selective_scan_fwd(u, delta, A, B, C, D?, delta_bias?, initial_state?, delta_softplus)` | (y (b, k*d, l), last_state (b, k*d, n)), computation dtype |
| `vmamba::selective_scan_bwd(dy, dlast?, u, delta, A, B, C, D?, delta_bias?, initial_state?, delta_softplus)` | (du, ddelta, dA, dB, dC, dD, ddelta_bias, dinitial_state) |
| `vmamba::ss2d_core_fwd(x, delta, A, B, C, D?, delta_bias?, delta_softplus)` | y (b, d, h, w), computation dtype |
| `vmamba::ss2d_core_bwd(dy, x, delta, A, B, C, D?, delta_bias?, delta_softplus)` | (dx, ddelta, dA, dB, dC, dD, ddelta_bias) |

Layouts and the dtype rule are the reference's (`vmamba_ref`): the scan computes in float64 for
float64 input and in float32 otherwise, and returns that computation dtype. Each backward
operator returns every gradient, each in its input's dtype; for an optional input passed as
None it returns the gradient with respect to a zero tensor of that shape (computation dtype),
which the autograd formula drops. The FLOP formula is the VMamba authors'
(`9*b*l*(k*d)*n + b*(k*d)*l`, spec section 9), counted for the forward operators only, as they
count it; cross-scan and cross-merge count zero, as in fvcore.

What is shared by every device and lives here: the schemas, the fake (meta) implementations,
the autograd formulas and the FLOP formulas. The CPU kernels are the Numba backend's, imported
on first call so that importing this module needs no Numba.

Adding the CUDA kernels (the Triton backend) registers implementations of the SAME operators,
with the CPU kernel's arguments and return values, for instance in `vmamba_fast/triton/ops.py`:

    from vmamba_fast import ops

    @ops.selective_scan_fwd.register_kernel("cuda")
    def _(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus):
        ...  # launch the kernel; return (y, last_state) exactly as the CPU kernel does

and likewise `ops.selective_scan_bwd`, `ops.ss2d_core_fwd`, `ops.ss2d_core_bwd`,
`ops.cross_scan`, `ops.cross_merge`. Autograd, torch.compile and the FLOP counter then work on
CUDA tensors with nothing else to write; `torch.library.opcheck` tests the new kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vmamba_ref.checks import check_shape
from vmamba_ref.cross_scan import ROUTES
from vmamba_ref.selective_scan import compute_dtype

# ------------------------------------------------------------------------------------------------
# cross_scan / cross_merge: each is the other's adjoint, so each one's backward is the other.
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("vmamba::cross_scan", mutates_args=(), device_types="cpu")
def cross_scan(x: Tensor) -> Tensor:
    """x (b, d, h, w) -> xs (b, 4, d, h*w): the four route sequences (paper section 3.3)."""
    from vmamba_fast.numba.cross_scan import cross_scan_cpu

    return cross_scan_cpu(x)


@cross_scan.register_fake
def _(x: Tensor) -> Tensor:
    check_shape("vmamba::cross_scan", "x", x, (None, None, None, None), "b d h w")
    b, d, h, w = x.shape
    return x.new_empty(b, ROUTES, d, h * w)  # (b, k, d, l)


@torch.library.custom_op("vmamba::cross_merge", mutates_args=(), device_types="cpu")
def cross_merge(ys: Tensor) -> Tensor:
    """ys (b, 4, d, h, w) -> y (b, d, h, w): each route's outputs summed back onto the grid."""
    from vmamba_fast.numba.cross_scan import cross_merge_cpu

    return cross_merge_cpu(ys)


@cross_merge.register_fake
def _(ys: Tensor) -> Tensor:
    check_shape("vmamba::cross_merge", "ys", ys, (None, ROUTES, None, None, None), "b k d h w")
    b, _, d, h, w = ys.shape
    return ys.new_empty(b, d, h, w)  # (b, d, h, w)


def _cross_scan_setup(ctx, inputs, output) -> None:
    ctx.grid = tuple(inputs[0].shape)  # (b, d, h, w)


def _cross_scan_backward(ctx, dxs: Tensor) -> Tensor:
    b, d, h, w = ctx.grid
    return cross_merge(dxs.reshape(b, ROUTES, d, h, w))  # (b, d, h, w)


def _cross_merge_backward(ctx, dy: Tensor) -> Tensor:
    b, d, h, w = dy.shape
    return cross_scan(dy).reshape(b, ROUTES, d, h, w)  # (b, k, d, h, w)


cross_scan.register_autograd(_cross_scan_backward, setup_context=_cross_scan_setup)
cross_merge.register_autograd(_cross_merge_backward, setup_context=lambda ctx, inputs, output: None)

# ------------------------------------------------------------------------------------------------
# selective scan
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("vmamba::selective_scan_fwd", mutates_args=(), device_types="cpu")
def selective_scan_fwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor]:
    """The selective scan (Mamba algorithm 2) -> (y (b, k*d, l), last_state (b, k*d, n))."""
    from vmamba_fast.numba.selective_scan import selective_scan_fwd_cpu

    return selective_scan_fwd_cpu(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus)


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus):
    fn = "vmamba::selective_scan_fwd"
    check_shape(fn, "u", u, (None, None, None), "b k*d l")
    check_shape(fn, "A", A, (u.shape[1], None), "k*d n")
    b, kd, l = u.shape
    dtype = compute_dtype(u.dtype)
    y = u.new_empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    return y, u.new_empty(b, kd, A.shape[1], dtype=dtype)  # (b, k*d, n)


@torch.library.custom_op("vmamba::selective_scan_bwd", mutates_args=(), device_types="cpu")
def selective_scan_bwd(
    dy: Tensor,
    dlast: Tensor | None,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the selective scan, recomputing its states ->
    (du, ddelta, dA, dB, dC, dD, ddelta_bias, dinitial_state)."""
    from vmamba_fast.numba.selective_scan import selective_scan_bwd_cpu

    return selective_scan_bwd_cpu(
        dy, dlast, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
    )


@selective_scan_bwd.register_fake
def _(dy, dlast, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus):
    b, kd, _ = u.shape
    n = A.shape[1]
    dtype = compute_dtype(u.dtype)

    def like(t, shape):
        return u.new_empty(shape, dtype=dtype) if t is None else torch.empty_like(t)

    return (
        torch.empty_like(u),
        torch.empty_like(delta),
        torch.empty_like(A),
        torch.empty_like(B),
        torch.empty_like(C),
        like(D, (kd,)),
        like(delta_bias, (kd,)),
        like(initial_state, (b, kd, n)),
    )


def _scan_setup(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, initial_state)
    ctx.delta_softplus = delta_softplus


def _scan_backward(ctx, dy: Tensor, dlast: Tensor):
    u, delta, A, B, C, D, delta_bias, initial_state = ctx.saved_tensors
    grads = selective_scan_bwd(
        dy, dlast, u, delta, A, B, C, D, delta_bias, initial_state, ctx.delta_softplus
    )
    inputs = (u, delta, A, B, C, D, delta_bias, initial_state)
    return (*(None if t is None else g for g, t in zip(grads, inputs, strict=True)), None)


selective_scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup)

# ------------------------------------------------------------------------------------------------
# fused SS2D core
# ------------------------------------------------------------------------------------------------


@torch.library.custom_op("vmamba::ss2d_core_fwd", mutates_args=(), device_types="cpu")
def ss2d_core_fwd(
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """Cross-scan, the selective scan of every route and cross-merge, fused -> y (b, d, h, w)."""
    from vmamba_fast.numba.ss2d_core import ss2d_core_fwd_cpu

    return ss2d_core_fwd_cpu(x, delta, A, B, C, D, delta_bias, delta_softplus)


@ss2d_core_fwd.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_softplus):
    check_shape("vmamba::ss2d_core_fwd", "x", x, (None, None, None, None), "b d h w")
    return x.new_empty(x.shape, dtype=compute_dtype(x.dtype))  # (b, d, h, w)


@torch.library.custom_op("vmamba::ss2d_core_bwd", mutates_args=(), device_types="cpu")
def ss2d_core_bwd(
    dy: Tensor,
    x: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the fused SS2D core -> (dx, ddelta, dA, dB, dC, dD, ddelta_bias)."""
    from vmamba_fast.numba.ss2d_core import ss2d_core_bwd_cpu

    return ss2d_core_bwd_cpu(dy, x, delta, A, B, C, D, delta_bias, delta_softplus)


@ss2d_core_bwd.register_fake
def _(dy, x, delta, A, B, C, D, delta_bias, delta_softplus):
    kd = A.shape[0]
    dtype = compute_dtype(x.dtype)

    def like(t):
        return x.new_empty((kd,), dtype=dtype) if t is None else torch.empty_like(t)

    return (
        torch.empty_like(x),
        torch.empty_like(delta),
        torch.empty_like(A),
        torch.empty_like(B),
        torch.empty_like(C),
        like(D),
        like(delta_bias),
    )


def _core_setup(ctx, inputs, output) -> None:
    x, delta, A, B, C, D, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus = delta_softplus


def _core_backward(ctx, dy: Tensor):
    x, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    grads = ss2d_core_bwd(dy, x, delta, A, B, C, D, delta_bias, ctx.delta_softplus)
    inputs = (x, delta, A, B, C, D, delta_bias)
    return (*(None if t is None else g for g, t in zip(grads, inputs, strict=True)), None)


ss2d_core_fwd.register_autograd(_core_backward, setup_context=_core_setup)

# ------------------------------------------------------------------------------------------------
# FLOP formulas (VMamba's `selective_scan_flop_jit`, spec section 9)
# ------------------------------------------------------------------------------------------------


def scan_flops(b: int, l: int, kd: int, n: int) -> int:
    """The VMamba authors' count for a selective scan over k*d channels: 9*b*l*(k*d)*n for the
    discretization, recurrence and readout, plus b*(k*d)*l for the D skip."""
    return 9 * b * l * kd * n + b * kd * l


@register_flop_formula(torch.ops.vmamba.selective_scan_fwd)
def _selective_scan_flop(u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
    b, kd, l = u_shape
    return scan_flops(b, l, kd, A_shape[1])


@register_flop_formula(torch.ops.vmamba.ss2d_core_fwd)
def _ss2d_core_flop(x_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
    b, d, h, w = x_shape
    return scan_flops(b, h * w, ROUTES * d, A_shape[1])


__all__ = [
    "cross_merge",
    "cross_scan",
    "scan_flops",
    "selective_scan_bwd",
    "selective_scan_fwd",
    "ss2d_core_bwd",
    "ss2d_core_fwd",
]
