"""Run existing VMamba and Mamba code without compiling anything: our kernels under the names of
the CUDA extensions that code imports.

Official VMamba (`classification/models/csms6s.py`) and mamba_ssm
(`mamba_ssm/ops/selective_scan_interface.py`) import compiled extension modules and call their
`fwd` and `bwd` inside an `autograd.Function`. Those extensions often fail to build.
`install()` is an explicit, opt-in installer (as `pymysql.install_as_MySQLdb()` is): it puts
module objects into `sys.modules` under the extensions' names, so that the unchanged code's
`import selective_scan_cuda_oflex` finds ours. Call it before the consumer is imported;
`uninstall()` puts `sys.modules` back as it was.

| name                        | from                | fwd -> returns                          | bwd -> returns |
|-----------------------------|---------------------|-----------------------------------------|----------------|
| `selective_scan_cuda_oflex` | official VMamba     | `fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows, out_float)` -> `[out, x]` | `bwd(u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus, nrows)` -> `[du, ddelta, dA, dB, dC, dD, ddelta_bias]` |
| `selective_scan_cuda_core`  | official VMamba     | `fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows)` -> `[out, x]` | as oflex |
| `selective_scan_cuda`       | mamba_ssm           | `fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)` -> `[out, x]`, `[out, x, out_z]` with z | `bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z)` -> `[du, ddelta, dA, dB, dC, dD, ddelta_bias]`, then `dz` when z is given, then `out_z` when `recompute_out_z` |

These argument lists and return lists are those of the pybind11 bindings: VMamba's
`kernels/selective_scan/csrc/selective_scan/cusoflex/selective_scan_oflex.cpp` and
`cus/selective_scan.cpp`, and mamba_ssm's `csrc/selective_scan/selective_scan.cpp` (whose
`SelectiveScanFn.backward` reads `dz = rest[0]` after the seven gradients). An optional input
passed as None has None for its gradient, as the bindings return an undefined tensor there.

Dimension letters: b batch, l sequence length, n state size, d channels of the scan (VMamba's
k*d: its k = 4 routes times d), g groups of B and C (VMamba's routes k; channel c belongs to
group c // (d/g)).

Layouts. VMamba's: u, delta (b, d, l); A (d, n); B, C (b, g, n, l); D, delta_bias (d,): ours
exactly. mamba_ssm's: u, delta, z (b, d, l); A (d, n), real; D, delta_bias (d,); B and C each
either constant (d, n), variable (b, n, l), or grouped variable (b, g, n, l). The contract's
`to_grouped_projections` maps them onto our grouped layout (the one mapping, which every
backend's public `selective_scan` uses too; `from_grouped_projection` maps gradients back): variable (b, n, l) is g = 1, (b, 1, n, l); grouped is as is; constant
(d, n) is one group per channel, (b, d, n, l), expanded over b and l (its gradient is the sum
over b and l). When one of B, C is constant and the other variable, the variable one is
repeated to one group per channel too (its gradient summed back over each group's channels).

The gate (mamba_ssm only): out_z = out * silu(z). Its backward runs in torch: the scan's dout
is dout_z * silu(z), and dz = dout_z * out * silu'(z), silu'(z) = sigmoid(z) (1 + z (1 -
sigmoid(z))).

The states `x`. The compiled kernels return x (b, d, n_chunks, 2n) float32: per chunk of 2048
steps, the running scan as (a, h) pairs, a = the product of exp(dt * A) so far (even slots) and
h the state (odd slots); mamba_ssm reads the last state as `x[:, :, -1, 1::2]`, and their
backward reads the chunk states back. Ours is x (b, d, 1, 2n), one chunk whatever l: the
product exp(A * sum_t dt_t) in the even slots and the last state in the odd slots, so that
`x[:, :, -1, 1::2]` is the last state. Our backward ignores x: it recomputes the states.

Dtypes, as the compiled modules return them: VMamba's oflex `out` is float32 when
`out_float` (VMamba's `oflex=True`), else u's dtype; `selective_scan_cuda_core`'s and mamba_ssm's
`out` has u's dtype, mamba_ssm's `out_z` z's dtype; x is float32 (float64 for float64 u).
Gradients come in each input's dtype. The scan itself computes in float32 (float64 for float64
inputs, which the compiled modules refuse and we accept).

Dispatch: CPU tensors run the Numba kernels, CUDA tensors the Triton kernels, through the
`torch.ops.vmamba.selective_scan_fwd` / `selective_scan_bwd` operators (`get_ops("numba")` or
`get_ops("triton")` loads and registers them on the first call). A tensor on any other device
raises, naming it. `install(backend="numba")` or `"triton"` pins one kernel backend;
`install(backend="ref")` or `"torch"` runs every call through that backend's `selective_scan`
instead (the backward by `torch.autograd.grad` over a recomputed forward), on any device.

Official implementation: the bindings named above. Deviations: `nrows` (a CUDA tiling hint) is
accepted and ignored; x has one chunk; VMamba oflex's `delta` with fewer channels than u (a
`delta_dim` that divides d) and mamba_ssm's complex A are not supported and raise; the
compiled modules' dtype restrictions (float32 A, D, delta_bias) are relaxed to any float dtype.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from vmamba_fast import ops
from vmamba_ref.contract import (
    PROJECTION_LAYOUTS,
    check_backend_name,
    check_same_device,
    check_selective_scan_args,
    check_shape,
    check_tensor,
    compute_dtype,
    from_grouped_projection,
    gate,
    get_ops,
    to_grouped_projections,
)

logger = logging.getLogger(__name__)

OFLEX = "selective_scan_cuda_oflex"
CORE = "selective_scan_cuda_core"
MAMBA = "selective_scan_cuda"
EXTENSION_NAMES: tuple[str, ...] = (OFLEX, CORE, MAMBA)

# device type -> the kernel backend that serves it when install(backend=None)
KERNEL_BACKENDS: dict[str, str] = {"cpu": "numba", "cuda": "triton"}
# backends run through their `selective_scan` and torch.autograd instead of the operators
AUTOGRAD_BACKENDS = ("ref", "torch")


class ShadowingError(RuntimeError):
    """`install()` refused to hide a module that is already imported or importable."""


# ------------------------------------------------------------------------------------------------
# The scan, on the backend that serves the tensors' device
# ------------------------------------------------------------------------------------------------


def _serving_backend(fn: str, backend: str | None, tensors: dict[str, object]) -> str:
    """The backend that runs this call: every tensor on one device, which the backend serves.
    Arguments that are not tensors are left to the type checks."""
    present = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if backend not in AUTOGRAD_BACKENDS:
        for name, t in present.items():
            if t.device.type not in KERNEL_BACKENDS:
                raise ValueError(
                    f"{fn}: `{name}` is on {t.device}; these kernels run on CPU tensors (Numba) "
                    "or CUDA tensors (Triton): move the tensors to 'cpu' or 'cuda'"
                )
    check_same_device(fn, list(present), list(present.values()))
    first, tensor = next(iter(present.items()))
    if backend is None:
        return KERNEL_BACKENDS[tensor.device.type]
    if backend in KERNEL_BACKENDS.values() and KERNEL_BACKENDS.get(tensor.device.type) != backend:
        raise ValueError(
            f"{fn}: install(backend={backend!r}) serves {'CPU' if backend == 'numba' else 'CUDA'} "
            f"tensors only, but `{first}` is on {tensor.device}; install(backend=None) picks the "
            "backend by device"
        )
    return backend


def _scan_fwd(name, u, delta, A, B, C, D, delta_bias, delta_softplus):
    """y (b, d, l) and the last state (b, d, n), both in the computation dtype, on backend
    `name`. Layouts are ours: B, C (b, g, n, l)."""
    with torch.no_grad():
        if name in AUTOGRAD_BACKENDS:
            return get_ops(name).selective_scan(
                u, delta, A, B, C, D, delta_bias, delta_softplus, None, True
            )
        get_ops(name)  # registers the device's kernels of the vmamba:: operators
        return ops.selective_scan_fwd(u, delta, A, B, C, D, delta_bias, None, delta_softplus)


def _scan_bwd(name, dout, u, delta, A, B, C, D, delta_bias, delta_softplus):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias) on backend `name`, each in its input's dtype;
    None for the gradient of an input passed as None."""
    inputs = (u, delta, A, B, C, D, delta_bias)
    if name in AUTOGRAD_BACKENDS:
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
            y = get_ops(name).selective_scan(*leaves, delta_softplus)
            wanted = [t for t in leaves if t is not None]
            grads = iter(torch.autograd.grad(y, wanted, dout.to(y.dtype)))
        return tuple(None if t is None else next(grads) for t in leaves)
    get_ops(name)
    with torch.no_grad():
        grads = ops.selective_scan_bwd(
            dout, None, u, delta, A, B, C, D, delta_bias, None, delta_softplus
        )
    return tuple(None if t is None else g for g, t in zip(grads[:7], inputs, strict=True))


def _chunk_states(delta, A, delta_bias, delta_softplus, last_state) -> torch.Tensor:
    """The compiled kernels' x with one chunk: (b, d, 1, 2n), exp(A * sum_t dt_t) in the even
    slots, the last state in the odd ones."""
    dtype = last_state.dtype
    dt = delta.to(dtype)  # (b, d, l)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]  # (b, d, l)
    if delta_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt.sum(-1)[:, :, None] * A.to(dtype))  # (b, d, 1) * (d, n) -> (b, d, n)
    x = torch.stack((decay, last_state), dim=-1)  # (b, d, n, 2)
    return x.flatten(-2)[:, :, None]  # (b, d, n, 2) -> (b, d, 1, 2n)


# ------------------------------------------------------------------------------------------------
# Official VMamba: selective_scan_cuda_oflex, selective_scan_cuda_core
# ------------------------------------------------------------------------------------------------


def _vmamba_checks(fn, backend, u, delta, A, B, C, D, delta_bias, **more) -> str:
    """Check the arguments (device first: a meta tensor cannot be checked for finite values) and
    return the backend that serves them."""
    check_tensor(fn, "u", u)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias}
    name = _serving_backend(fn, backend, {**tensors, **more})
    check_selective_scan_args(fn, u, delta, A, B, C, D, delta_bias)
    return name


def _vmamba_fwd(fn, backend, u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
    name = _vmamba_checks(fn, backend, u, delta, A, B, C, D, delta_bias)
    y, last_state = _scan_fwd(name, u, delta, A, B, C, D, delta_bias, delta_softplus)
    out = y if out_float else y.to(u.dtype)  # (b, k*d, l)
    return [out, _chunk_states(delta, A, delta_bias, delta_softplus, last_state)]


def _vmamba_bwd(fn, backend, u, delta, A, B, C, D, delta_bias, dout, delta_softplus):
    name = _vmamba_checks(fn, backend, u, delta, A, B, C, D, delta_bias, dout=dout)
    check_tensor(fn, "dout", dout)
    check_shape(fn, "dout", dout, tuple(u.shape), "b k*d l")
    return list(_scan_bwd(name, dout, u, delta, A, B, C, D, delta_bias, delta_softplus))


# ------------------------------------------------------------------------------------------------
# mamba_ssm: selective_scan_cuda, and its layouts of B and C
# ------------------------------------------------------------------------------------------------


def _mamba_args(fn, backend, u, delta, A, B, C, D, z, delta_bias, **more):
    """Check mamba_ssm's layouts (device first) and return the backend that serves them and our
    arguments (u, delta, A, B, C, D, delta_bias), B and C mapped onto (b, g, n, l) by the
    contract's `to_grouped_projections`, u, delta, B, C in one dtype."""
    check_tensor(fn, "u", u)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    name = _serving_backend(fn, backend, {**tensors, **more})
    _, g, _, _, _ = check_selective_scan_args(
        fn, u, delta, A, B, C, D, delta_bias, z=z, layouts=PROJECTION_LAYOUTS
    )
    u_g, delta_g, B_g, C_g = to_grouped_projections(u, delta, B, C, g)  # B, C (b, g, n, l)
    return name, (u_g, delta_g, A, B_g, C_g, D, delta_bias)


def _mamba_fwd(fn, backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    name, args = _mamba_args(fn, backend, u, delta, A, B, C, D, z, delta_bias)
    y, last_state = _scan_fwd(name, *args, delta_softplus)  # (b, d, l), (b, d, n)
    x = _chunk_states(delta, A, delta_bias, delta_softplus, last_state)  # (b, d, 1, 2n)
    result = [y.to(u.dtype), x]
    if z is not None:
        result.append(gate(y, z).to(z.dtype))  # (b, d, l)
    return result


def _mamba_bwd(
    fn, backend, u, delta, A, B, C, D, z, delta_bias, dout, out, dz, delta_softplus, recompute_out_z
):
    name, args = _mamba_args(
        fn, backend, u, delta, A, B, C, D, z, delta_bias, dout=dout, out=out, dz=dz
    )
    b, d, l = u.shape
    check_tensor(fn, "dout", dout)
    check_shape(fn, "dout", dout, (b, d, l), "b d l")
    dz_out = out_z = None
    if z is not None:
        if out is None:  # the compiled module requires it; we recompute the scan instead
            out = _scan_fwd(name, *args, delta_softplus)[0]
        check_tensor(fn, "out", out)
        check_shape(fn, "out", out, (b, d, l), "b d l")
        dtype = compute_dtype(u.dtype)
        out_c, z_c, dout_c = out.to(dtype), z.to(dtype), dout.to(dtype)  # (b, d, l)
        sig = torch.sigmoid(z_c)
        silu = F.silu(z_c)
        dz_c = dout_c * out_c * sig * (1 + z_c * (1 - sig))  # dout_z * out * silu'(z)
        dout = dout_c * silu  # the scan's dout
        if dz is None:
            dz_out = dz_c.to(z.dtype)
        else:  # written into the caller's buffer, as the compiled module does
            check_tensor(fn, "dz", dz)
            check_shape(fn, "dz", dz, (b, d, l), "b d l")
            dz_out = dz.copy_(dz_c)
        if recompute_out_z:
            out_z = gate(out_c, z_c).to(z.dtype)
    du, ddelta, dA, dB, dC, dD, ddelta_bias = _scan_bwd(name, dout, *args, delta_softplus)
    result = [
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA,
        from_grouped_projection(dB, B),
        from_grouped_projection(dC, C),
        dD,
        ddelta_bias,
    ]
    if z is not None:
        result.append(dz_out)
    if recompute_out_z:
        result.append(out_z)
    return result


# ------------------------------------------------------------------------------------------------
# The module objects
# ------------------------------------------------------------------------------------------------


class CompatModule(types.ModuleType):
    """A stand-in for a compiled extension module: `fwd` and `bwd` on our kernels.
    `vmamba_backend` is the backend `install()` was given (None: by device)."""

    def __init__(self, name: str, backend: str | None) -> None:
        super().__init__(name, f"{type(self).__doc__}\n\nInstalled by {__name__}.install().")
        self.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, origin=__name__)
        self.vmamba_backend = backend


class OflexModule(CompatModule):
    """Official VMamba's `selective_scan_cuda_oflex`, on vmamba_fast's kernels."""

    def fwd(self, u, delta, A, B, C, D, delta_bias, delta_softplus, nrows, out_float):
        """-> [out (b, k*d, l), float32 if out_float else u's dtype; x (b, k*d, 1, 2n)]."""
        fn = f"{self.__name__}.fwd"
        return _vmamba_fwd(fn, self.vmamba_backend, u, delta, A, B, C, D, delta_bias, delta_softplus, out_float)

    def bwd(self, u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus, nrows):
        """-> [du, ddelta, dA, dB, dC, dD, ddelta_bias], each in its input's dtype (None for
        D, delta_bias passed as None). x is not read: the states are recomputed."""
        fn = f"{self.__name__}.bwd"
        return _vmamba_bwd(fn, self.vmamba_backend, u, delta, A, B, C, D, delta_bias, dout, delta_softplus)


class CoreModule(OflexModule):
    """Official VMamba's `selective_scan_cuda_core`, on vmamba_fast's kernels."""

    def fwd(self, u, delta, A, B, C, D, delta_bias, delta_softplus, nrows):
        """-> [out (b, k*d, l) in u's dtype, x (b, k*d, 1, 2n)]."""
        fn = f"{self.__name__}.fwd"
        return _vmamba_fwd(fn, self.vmamba_backend, u, delta, A, B, C, D, delta_bias, delta_softplus, False)


class MambaModule(CompatModule):
    """mamba_ssm's `selective_scan_cuda`, on vmamba_fast's kernels."""

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        """-> [out (b, d, l) in u's dtype, x (b, d, 1, 2n)], and out_z in z's dtype when z."""
        fn = f"{self.__name__}.fwd"
        return _mamba_fwd(fn, self.vmamba_backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
        """-> [du, ddelta, dA, dB, dC, dD, ddelta_bias], then dz when z, then out_z when
        recompute_out_z. With z, dout is the gradient of out_z and `out` the ungated output."""
        fn = f"{self.__name__}.bwd"
        return _mamba_bwd(
            fn, self.vmamba_backend, u, delta, A, B, C, D, z, delta_bias, dout, out, dz,
            delta_softplus, recompute_out_z,
        )  # fmt: skip


MODULE_TYPES: dict[str, type[CompatModule]] = {OFLEX: OflexModule, CORE: CoreModule, MAMBA: MambaModule}

# ------------------------------------------------------------------------------------------------
# install / uninstall
# ------------------------------------------------------------------------------------------------

# name -> what sys.modules held under it before install() (None: nothing)
_PREVIOUS: dict[str, types.ModuleType | None] = {}


def _occupant(name: str) -> str | None:
    """Why `name` is taken by a module that is not ours: imported, or importable; else None."""
    current = sys.modules.get(name)
    if isinstance(current, CompatModule):
        return None
    if name in sys.modules:
        return f"`{name}` is already imported ({current!r})"
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    return None if spec is None else f"`{name}` is importable from {spec.origin}"


def _served_by(backend: str | None) -> str:
    if backend is None:
        return "numba (CPU tensors), triton (CUDA tensors)"
    return backend


def install(
    backend: str | None = None, names: Iterable[str] | None = None, replace: bool = False
) -> dict[str, CompatModule]:
    """Put our stand-ins for compiled extension modules into `sys.modules`; call it before
    importing the code that imports them.

    Args:
        backend: None to run CPU tensors on "numba" and CUDA tensors on "triton"; "numba" or
            "triton" to pin one kernel backend; "ref" or "torch" to run every call through that
            backend's `selective_scan` with autograd (any device).
        names: which of `EXTENSION_NAMES` to provide (default all).
        replace: hide a module already imported or importable under one of `names`. Without
            it, such a module makes install() raise ShadowingError and change nothing.

    Returns:
        name -> the module object installed. Each installation is logged.
    """
    if backend is not None:
        check_backend_name(backend)
    names = EXTENSION_NAMES if names is None else tuple(names)
    unknown = [n for n in names if n not in MODULE_TYPES]
    if unknown:
        raise ValueError(f"install: no stand-in for {unknown}; known names: {list(EXTENSION_NAMES)}")
    if backend is not None:
        get_ops(backend)  # a missing dependency fails now, saying what to install
    taken = {name: why for name in names if (why := _occupant(name)) is not None}
    if taken and not replace:
        raise ShadowingError(
            "install: refusing to hide a real module: " + "; ".join(taken.values())
            + ". Use that module, leave its name out of `names`, or pass replace=True"
        )
    installed = {}
    for name in names:
        current = sys.modules.get(name)
        if not isinstance(current, CompatModule):
            _PREVIOUS[name] = current
        else:
            _PREVIOUS.setdefault(name, None)
        if name in taken:
            logger.warning("replacing %s with vmamba_fast's stand-in (replace=True)", taken[name])
        module = MODULE_TYPES[name](name, backend)
        sys.modules[name] = module
        installed[name] = module
        logger.info("%s -> vmamba_fast.compat, backend: %s", name, _served_by(backend))
    return installed


def uninstall(names: Iterable[str] | None = None) -> list[str]:
    """Undo install(): remove the stand-ins it added and put back the modules it replaced.
    Code that imported a stand-in keeps its reference. Returns the names restored."""
    names = list(_PREVIOUS) if names is None else list(names)
    restored = []
    for name in names:
        if name not in _PREVIOUS:
            continue
        previous = _PREVIOUS.pop(name)
        if not isinstance(sys.modules.get(name), CompatModule):
            logger.warning("uninstall: `%s` in sys.modules is no longer ours; left as it is", name)
            continue
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        restored.append(name)
        logger.info("%s: stand-in removed", name)
    return restored


# ------------------------------------------------------------------------------------------------
# selective_scan_fn: mamba_ssm's function, for code that can change one import
# ------------------------------------------------------------------------------------------------


class SelectiveScanFn(torch.autograd.Function):
    """mamba_ssm's `SelectiveScanFn` on the stand-in's fwd and bwd."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend):
        fn = "selective_scan_fn"
        out, x, *rest = _mamba_fwd(fn, backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus, ctx.backend = delta_softplus, backend
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, out)
        last_state = x[:, :, -1, 1::2]  # (b, d, n)
        result = out if z is None else rest[0]
        if not return_last_state:
            return result
        ctx.mark_non_differentiable(last_state)
        return result, last_state

    @staticmethod
    def backward(ctx, dout, *_):
        u, delta, A, B, C, D, z, delta_bias, out = ctx.saved_tensors
        grads = _mamba_bwd(
            "selective_scan_fn", ctx.backend, u, delta, A, B, C, D, z, delta_bias, dout, out, None,
            ctx.delta_softplus, False,
        )  # fmt: skip
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = grads
        dz = rest[0] if z is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None, None, None


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: str | None = None,
):
    """mamba_ssm's `selective_scan_fn`, differentiable, on our kernels.

    u, delta, z (b, d, l); A (d, n) real; B, C constant (d, n), variable (b, n, l) or grouped
    (b, g, n, l); D, delta_bias (d,). Returns out (b, d, l) in u's dtype, or out * silu(z) in
    z's dtype when z is given; with `return_last_state` also the last state (b, d, n) float32
    (float64 for float64 u), not differentiable, as in mamba_ssm. `backend` as in install().
    """
    if backend is not None:
        check_backend_name(backend)
    return SelectiveScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend
    )


__all__ = [
    "EXTENSION_NAMES",
    "CompatModule",
    "CoreModule",
    "MambaModule",
    "OflexModule",
    "SelectiveScanFn",
    "ShadowingError",
    "install",
    "selective_scan_fn",
    "uninstall",
]
