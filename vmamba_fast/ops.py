"""VMamba's scan operators as PyTorch operators, namespace `vmamba`: declarations only.

One operator per kernel, so that `torch.compile` traces each as a single node, `opcheck` can test
it, and `torch.utils.flop_counter` counts it:

| operator                        | returns                                               |
|---------------------------------|-------------------------------------------------------|
| `vmamba::cross_scan(x)`          | xs (b, k=4, d, l), x's dtype                           |
| `vmamba::cross_merge(ys)`        | y (b, d, h, w), ys's dtype                             |
| `vmamba::selective_scan_fwd(u, delta, A, B, C, D?, delta_bias?, initial_state?, delta_softplus)` | (y (b, k*d, l), last_state (b, k*d, n)), computation dtype |
| `vmamba::selective_scan_bwd(dy, dlast?, u, delta, A, B, C, D?, delta_bias?, initial_state?, delta_softplus)` | (du, ddelta, dA, dB, dC, dD, ddelta_bias, dinitial_state) |
| `vmamba::ss2d_core_fwd(x, delta, A, B, C, D?, delta_bias?, delta_softplus)` | y (b, d, h, w), computation dtype, stored like a CPU x (`ss2d_core_output`) |
| `vmamba::ss2d_core_bwd(dy, x, delta, A, B, C, D?, delta_bias?, delta_softplus)` | (dx, ddelta, dA, dB, dC, dD, ddelta_bias), dx stored like y |

Layouts and the dtype rule are the contract's (`vmamba_ref/contract.py`): the scan computes in
float64 for float64 input and in float32 otherwise, and returns that computation dtype. Each
backward operator returns every gradient, each in its input's dtype; for an optional input
passed as None it returns the gradient with respect to a zero tensor of that shape
(computation dtype), which the autograd formula drops. The forward operators count the VMamba
authors' FLOPs (`vmamba_ref.contract.scan_flops`); cross-scan and cross-merge count zero, as in
fvcore.

What lives here is what every device shares: the schemas, the fake (meta) implementations, the
autograd formulas and the FLOP formulas. No device code: each backend package registers its
kernels for its device when it is imported, through `register_kernels`:

| device | kernels                    | registered by             |
|--------|----------------------------|---------------------------|
| cpu    | Numba                      | `vmamba_fast/numba/__init__.py`  |
| cuda   | Triton                     | `vmamba_fast/triton/__init__.py` |

Calling an operator on a device whose backend was never loaded raises torch's "Could not run
'vmamba::...' with arguments from the '<device>' backend"; `get_ops(backend)` loads it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from vmamba_ref.contract import ROUTES, check_shape, compute_dtype, scan_flops

_LIB = torch.library.Library("vmamba", "DEF")  # noqa: TOR901 - the namespace's one definition

SCHEMAS = {
    "cross_scan": "(Tensor x) -> Tensor",
    "cross_merge": "(Tensor ys) -> Tensor",
    "selective_scan_fwd": (
        "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
        "Tensor? initial_state, bool delta_softplus) -> (Tensor, Tensor)"
    ),
    "selective_scan_bwd": (
        "(Tensor dy, Tensor? dlast, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? delta_bias, Tensor? initial_state, bool delta_softplus) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "ss2d_core_fwd": (
        "(Tensor x, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
        "bool delta_softplus) -> Tensor"
    ),
    "ss2d_core_bwd": (
        "(Tensor dy, Tensor x, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? delta_bias, bool delta_softplus) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
}
for _name, _schema in SCHEMAS.items():
    _LIB.define(_name + _schema)

cross_scan = torch.ops.vmamba.cross_scan.default
cross_merge = torch.ops.vmamba.cross_merge.default
selective_scan_fwd = torch.ops.vmamba.selective_scan_fwd.default
selective_scan_bwd = torch.ops.vmamba.selective_scan_bwd.default
ss2d_core_fwd = torch.ops.vmamba.ss2d_core_fwd.default
ss2d_core_bwd = torch.ops.vmamba.ss2d_core_bwd.default


def register_kernels(device: str, lib: torch.library.Library | None = None, **kernels: Callable) -> None:
    """Register a backend's kernels for `device` ("cpu", "cuda"): one keyword per operator in
    `SCHEMAS`, each taking and returning exactly what the schema says. Called once by each
    backend package when it is imported."""
    unknown = sorted(set(kernels) - set(SCHEMAS))
    if unknown:
        raise ValueError(f"register_kernels: no operator named {unknown}; known: {sorted(SCHEMAS)}")
    for name, kernel in kernels.items():
        torch.library.register_kernel(f"vmamba::{name}", device, kernel, lib=lib)


# ------------------------------------------------------------------------------------------------
# Fake (meta) implementations: shapes and dtypes only, for torch.compile and the meta device.
# ------------------------------------------------------------------------------------------------


@torch.library.register_fake("vmamba::cross_scan")
def _(x: Tensor) -> Tensor:
    check_shape("vmamba::cross_scan", "x", x, (None, None, None, None), "b d h w")
    b, d, h, w = x.shape
    return x.new_empty(b, ROUTES, d, h * w)  # (b, k, d, l)


@torch.library.register_fake("vmamba::cross_merge")
def _(ys: Tensor) -> Tensor:
    check_shape("vmamba::cross_merge", "ys", ys, (None, ROUTES, None, None, None), "b k d h w")
    b, _, d, h, w = ys.shape
    return ys.new_empty(b, d, h, w)  # (b, d, h, w)


@torch.library.register_fake("vmamba::selective_scan_fwd")
def _(u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus):
    fn = "vmamba::selective_scan_fwd"
    check_shape(fn, "u", u, (None, None, None), "b k*d l")
    check_shape(fn, "A", A, (u.shape[1], None), "k*d n")
    b, kd, l = u.shape
    dtype = compute_dtype(u.dtype)
    y = u.new_empty(b, kd, l, dtype=dtype)  # (b, k*d, l)
    return y, u.new_empty(b, kd, A.shape[1], dtype=dtype)  # (b, k*d, n)


def _grad_like(t: Tensor | None, reference: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The gradient of input `t` as the kernels return it: t's shape and dtype, contiguous
    whatever t's strides (a transposed u; the core's dx is the one exception,
    `ss2d_core_output`); for an optional input passed as None, a contiguous stand-in of `shape`
    in the computation dtype."""
    if t is None:
        return reference.new_empty(shape, dtype=dtype)
    return t.new_empty(t.shape)


@torch.library.register_fake("vmamba::selective_scan_bwd")
def _(dy, dlast, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus):
    b, kd, _ = u.shape
    n = A.shape[1]
    dtype = compute_dtype(u.dtype)
    return (
        *(_grad_like(t, u, (), dtype) for t in (u, delta, A, B, C)),
        _grad_like(D, u, (kd,), dtype),
        _grad_like(delta_bias, u, (kd,), dtype),
        _grad_like(initial_state, u, (b, kd, n), dtype),
    )


def ss2d_core_output(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The y of `vmamba::ss2d_core_fwd` for this x, and the dx of `vmamba::ss2d_core_bwd`,
    uninitialised: (b, d, h, w) in `dtype`, stored channels_last when x is a channels_last CPU
    map (what the network keeps on the CPU: the CPU kernel reads x and writes y in that layout,
    so that out_norm reads y in place; dx in x's layout keeps the elementwise backward before
    the core off torch's mixed-layout path), contiguous otherwise. The CPU kernels and the fake
    kernels allocate them here, so that torch.compile's graphs expect the strides the kernels
    return."""
    b, d, h, w = x.shape
    if x.device.type == "cpu" and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.new_empty((b, h, w, d), dtype=dtype).permute(0, 3, 1, 2)  # (b, d, h, w)
    return x.new_empty((b, d, h, w), dtype=dtype)  # (b, d, h, w)


@torch.library.register_fake("vmamba::ss2d_core_fwd")
def _(x, delta, A, B, C, D, delta_bias, delta_softplus):
    check_shape("vmamba::ss2d_core_fwd", "x", x, (None, None, None, None), "b d h w")
    return ss2d_core_output(x, compute_dtype(x.dtype))  # (b, d, h, w)


@torch.library.register_fake("vmamba::ss2d_core_bwd")
def _(dy, x, delta, A, B, C, D, delta_bias, delta_softplus):
    kd = A.shape[0]
    dtype = compute_dtype(x.dtype)
    return (
        ss2d_core_output(x, x.dtype),  # dx, stored like y
        *(_grad_like(t, x, (), dtype) for t in (delta, A, B, C)),
        _grad_like(D, x, (kd,), dtype),
        _grad_like(delta_bias, x, (kd,), dtype),
    )


# ------------------------------------------------------------------------------------------------
# Autograd. cross_scan and cross_merge are each other's adjoint, so each one's backward is the
# other; the scans' backward is their backward operator.
# ------------------------------------------------------------------------------------------------


def _cross_scan_setup(ctx, inputs, output) -> None:
    ctx.grid = tuple(inputs[0].shape)  # (b, d, h, w)


def _cross_scan_backward(ctx, dxs: Tensor) -> Tensor:
    b, d, h, w = ctx.grid
    return cross_merge(dxs.reshape(b, ROUTES, d, h, w))  # (b, d, h, w)


def _cross_merge_backward(ctx, dy: Tensor) -> Tensor:
    b, d, h, w = dy.shape
    return cross_scan(dy).reshape(b, ROUTES, d, h, w)  # (b, k, d, h, w)


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


def _core_setup(ctx, inputs, output) -> None:
    x, delta, A, B, C, D, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus = delta_softplus


def _core_backward(ctx, dy: Tensor):
    x, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    grads = ss2d_core_bwd(dy, x, delta, A, B, C, D, delta_bias, ctx.delta_softplus)
    inputs = (x, delta, A, B, C, D, delta_bias)
    return (*(None if t is None else g for g, t in zip(grads, inputs, strict=True)), None)


class UnsupportedTransformError(RuntimeError):
    """A `vmamba::` operator met an autograd mode it has no formula for: forward-mode AD
    (`torch.autograd.forward_ad`, `torch.func.jvp`) or reverse mode inside a `torch.func`
    transform (`grad`, `jacrev`, `vmap` over `grad`)."""


_ALTERNATIVE = (
    "use backend='torch' or backend='ref' (plain PyTorch, which every autograd mode and "
    "torch.func transform differentiates), or torch.autograd.grad / .backward() outside torch.func"
)


def _register_autograd(name: str, backward: Callable, setup_context: Callable) -> None:
    """torch.library.register_autograd, guarded: the autograd kernel it builds would drop a
    forward-mode tangent silently (it runs the forward as if nothing required a gradient) and
    fails inside torch.func's grad with an error about autograd.Function. Both raise
    `UnsupportedTransformError` instead, naming the operator and the alternative. Everything
    else (reverse mode, torch.compile, vmap without a gradient) goes to the kernel as before."""
    op = getattr(torch.ops.vmamba, name).default
    info = torch._library.autograd.Info(backward, setup_context)
    autograd_kernel = torch._library.autograd.make_autograd_impl(op, info)

    def guarded(keyset, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, Tensor)]
        if any(fwAD.unpack_dual(t).tangent is not None for t in tensors):
            raise UnsupportedTransformError(
                f"vmamba::{name} has no forward-mode derivative (torch.func.jvp, "
                f"torch.autograd.forward_ad, jacfwd): {_ALTERNATIVE}"
            )
        if (
            torch._C._are_functorch_transforms_active()
            and torch.is_grad_enabled()
            and any(t.requires_grad for t in tensors)
        ):
            raise UnsupportedTransformError(
                f"vmamba::{name} cannot be differentiated inside a torch.func transform (grad, "
                f"jacrev, vmap over grad): {_ALTERNATIVE}"
            )
        return autograd_kernel(keyset, *args, **kwargs)

    _LIB.impl(name, guarded, "Autograd", with_keyset=True)


_register_autograd("cross_scan", _cross_scan_backward, _cross_scan_setup)
_register_autograd("cross_merge", _cross_merge_backward, lambda ctx, inputs, output: None)
_register_autograd("selective_scan_fwd", _scan_backward, _scan_setup)
_register_autograd("ss2d_core_fwd", _core_backward, _core_setup)

# ------------------------------------------------------------------------------------------------
# FLOP formulas: the contract's `scan_flops`, the one formula `vmamba flops` uses too.
# ------------------------------------------------------------------------------------------------


@register_flop_formula(torch.ops.vmamba.selective_scan_fwd)
def _selective_scan_flop(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, *args, out_shape=None, **kwargs) -> int:
    b, kd, l = u_shape
    return scan_flops(b, kd, l, A_shape[1], with_D=D_shape is not None)


@register_flop_formula(torch.ops.vmamba.ss2d_core_fwd)
def _ss2d_core_flop(x_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, *args, out_shape=None, **kwargs) -> int:
    b, d, h, w = x_shape
    return scan_flops(b, ROUTES * d, h * w, A_shape[1], with_D=D_shape is not None)


__all__ = [
    "SCHEMAS",
    "UnsupportedTransformError",
    "cross_merge",
    "cross_scan",
    "register_kernels",
    "selective_scan_bwd",
    "selective_scan_fwd",
    "ss2d_core_bwd",
    "ss2d_core_fwd",
]
