"""The contract: what every backend shares, in one place.

The oracle (`vmamba_ref`'s `cross_scan.py`, `selective_scan.py`, `ss2d_core.py`), the network and
every fast backend (`vmamba_fast`) read these facts from here and nowhere else:

| fact                        | names                                                           |
|-----------------------------|-----------------------------------------------------------------|
| argument checks             | `check_selective_scan_args`, `check_ss2d_core_args`, `check_grid`, ... |
| the layouts of B and C, the gate | `PROJECTION_LAYOUTS`, `to_grouped_projections`, `gate`, `scan_any_layout` |
| the empty scan              | `empty_scan`                                                    |
| the compute-dtype rule      | `compute_dtype`                                                 |
| the route table             | `ROUTES`, `route_positions`                                     |
| the softplus threshold      | `SOFTPLUS_THRESHOLD`                                            |
| the op protocol, its errors | `ScanOps`, `BackendUnavailableError`                            |
| the backends and their loader | `BACKENDS`, `get_ops`, `available_backends`, `fastest_backend` |
| the scan FLOP formula       | `scan_flops`                                                    |

Each check raises before any computation, naming the function, the argument, what was expected
and what was found. Shape errors are `ValueError`; dtype and type errors are `TypeError`.

Backends are found by name (a plugin lookup): `get_ops("numba")` imports the module that
`BACKEND_MODULES` names for it, on first use, and returns its `OPS`. Nothing here imports a
backend's code, so the arrows run one way: the oracle, the network and `vmamba_fast` all point
here, and this module points at no other file of the project. `torch.compile` traces the
lookup: a module already imported (by `vmamba_fast`'s import statements, which dynamo runs as it
traces them) is read from `sys.modules`, never through `importlib`, which dynamo cannot trace.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ------------------------------------------------------------------------------------------------
# Facts of the design
# ------------------------------------------------------------------------------------------------

ROUTES = 4  # k: row-major, column-major, and both reversed (paper section 3.3)

# softplus(x) = x above this, as torch's F.softplus and VMamba's CUDA kernels define it (the
# derivative is 1 there). Every backend's softplus switches at this value.
SOFTPLUS_THRESHOLD = 20.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs in and returns: float64 stays float64, all else float32
    (float16 and bfloat16 inputs return float32, as VMamba's "oflex" kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@lru_cache(maxsize=64)
def _route_positions(h: int, w: int) -> tuple[tuple[int, ...], ...]:
    row_major = [i * w + j for i in range(h) for j in range(w)]
    column_major = [i * w + j for j in range(w) for i in range(h)]
    return (
        tuple(row_major),
        tuple(column_major),
        tuple(reversed(row_major)),
        tuple(reversed(column_major)),
    )


def route_positions(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Grid positions visited by each route: `pos[k, t]` is the row-major index (i*w + j) read at
    step t of route k. Shape (k=4, l=h*w), int64."""
    if h < 1 or w < 1:
        raise ValueError(f"route_positions: h and w must be positive, got h={h}, w={w}")
    return torch.tensor(_route_positions(h, w), dtype=torch.long, device=device)  # (k, l)


def scan_flops(b: int, kd: int, l: int, n: int, with_D: bool = True) -> int:
    """The VMamba authors' FLOP count for a selective scan over k*d channels of length l with
    state size n (their `flops_selective_scan_fn`, one multiply-add = one FLOP): 9*b*l*(k*d)*n
    for the discretization, recurrence and readout, plus b*(k*d)*l for the D skip when there is
    one. The one formula: `vmamba flops` and the custom operators' FLOP formulas both call it."""
    return 9 * b * l * kd * n + (b * kd * l if with_D else 0)

# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------


def _fmt(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_tensor(fn: str, name: str, x: object, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    """`x` is a tensor of one of `dtypes`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{fn}: `{name}` must have dtype in {{{allowed}}}, got {x.dtype}")


def check_shape(
    fn: str, name: str, x: torch.Tensor, expected: Sequence[int | None], letters: str
) -> None:
    """`x.shape` equals `expected` (None = any size); `letters` names the dims, e.g. "b k*d l"."""
    if x.dim() != len(expected) or any(
        e is not None and s != e for s, e in zip(x.shape, expected, strict=False)
    ):
        names = letters.split()
        want = [n if e is None else f"{n}={e}" for n, e in zip(names, expected, strict=True)]
        raise ValueError(
            f"{fn}: `{name}` must have shape {_fmt(want)}, got {_fmt(tuple(x.shape))}"
        )


def check_same_dtype(fn: str, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """All `tensors` share one dtype."""
    first = tensors[0].dtype
    for n, t in zip(names[1:], tensors[1:], strict=True):
        if t.dtype != first:
            raise TypeError(
                f"{fn}: `{n}` must have the same dtype as `{names[0]}` ({first}), got {t.dtype}"
            )


def check_same_device(fn: str, names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """All `tensors` live on one device."""
    first = tensors[0].device
    for n, t in zip(names[1:], tensors[1:], strict=True):
        if t.device != first:
            raise ValueError(
                f"{fn}: `{n}` is on {t.device} but `{names[0]}` is on {first}; "
                "move them to one device"
            )


# Reading a GPU tensor's check waits for the GPU to finish all the work queued before it, so a
# model that checked its parameters at every call would stall the GPU dozens of times per
# forward pass. A parameter changes only when written in place, which bumps its version counter
# (optimizer steps, load_state_dict and nn.init all do): off the CPU, a tensor found finite is
# not checked again until its version changes. Writes through `.data` bypass the counter and so
# this cache, as they bypass autograd's own checks. Keys are ids, dropped when the tensor dies.
_found_finite: dict[int, tuple[weakref.ref, int]] = {}


def _known_finite(x: torch.Tensor) -> bool:
    entry = _found_finite.get(id(x))
    return entry is not None and entry[0]() is x and entry[1] == x._version


def _cacheable(x: torch.Tensor) -> bool:
    """Off the CPU (on the CPU a check is cheap), and not an inference tensor (no version)."""
    return x.device.type != "cpu" and not x.is_inference()


def _remember_finite(x: torch.Tensor) -> None:
    if not _cacheable(x):
        return
    key = id(x)
    _found_finite[key] = (weakref.ref(x, lambda _, key=key: _found_finite.pop(key, None)), x._version)


def _values(x: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding x's values. Inside a `torch.func` transform (grad, vmap, jvp, ...)
    x is a functorch wrapper without storage, whose values cannot be read (NumPy, `.item()`
    under vmap); its innermost wrapped tensor holds them (under vmap, those of every batch
    entry), and reading it is what an eager call would read."""
    functorch = getattr(torch._C, "_functorch", None)
    while functorch is not None and functorch.is_functorch_wrapped_tensor(x):
        x = functorch.get_unwrapped(x)
    return x


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element of x is finite. A float32/float64 CPU tensor is read through NumPy:
    the same answer at a third of the cost of two dispatched torch ops, which counts because
    every scan call checks its parameters. Not inside a `torch.func` transform, where every
    op's result, even `detach()` (which NumPy calls), is a wrapper without storage."""
    plain = x.detach()
    if (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and _values(plain) is plain
    ):
        return bool(np.isfinite(plain.numpy()).all())
    return bool(torch.isfinite(_values(plain)).all())


def check_finite(fn: str, name: str, x: torch.Tensor) -> None:
    """`x` holds no NaN or infinity (used for parameters, whose non-finite values poison every
    output). Off the CPU, an unchanged tensor already found finite is not read again. While
    `torch.compile` or `torch.export` traces, values are symbolic and the check cannot run; the
    traced program is the one eager mode checks. Inside a `torch.func` transform the values
    wrapped by the transform's tensors are checked (`_values`)."""
    if torch.compiler.is_compiling():
        return
    x = _values(x)
    if _known_finite(x):
        return
    if not _all_finite(x):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(
            f"{fn}: `{name}` must be finite, found {x[tuple(bad)].item()} at index {tuple(bad)}"
        )
    _remember_finite(x)


PROJECTION_LAYOUTS: tuple[str, ...] = ("constant", "variable", "grouped")
"""The layouts of B and C, mamba_ssm's `selective_scan_fn`'s: constant (k*d, n), one per channel
for every step; variable (b, n, l), one per step shared by all channels; grouped (b, k, n, l), one
per step and group, channel c reading group c // d. VMamba's is grouped with k = 4 routes, and
it is the only layout the kernels take: `to_grouped_projections` maps the others onto it."""


def check_real(fn: str, name: str, x: object) -> None:
    """`x` is not a complex tensor: mamba_ssm's complex-A variant is not implemented here."""
    if isinstance(x, torch.Tensor) and x.is_complex():
        raise TypeError(
            f"{fn}: `{name}` is complex ({x.dtype}); only real {name} is supported (the complex "
            "variant of mamba_ssm's selective scan is not implemented)"
        )


def _check_projection(
    fn: str, name: str, X: torch.Tensor, layouts: Sequence[str], b: int, kd: int, l: int,
    n: int | None, k: int | None,
) -> tuple[str, int, int]:  # fmt: skip
    """Check B or C against `layouts` and return (its layout, its group count, n). `n` and `k`
    are None for B (it defines them) and B's for C (a grouped C must match a grouped B)."""
    layout = PROJECTION_LAYOUTS[X.dim() - 2] if 2 <= X.dim() <= 4 else None
    if layout not in layouts:
        if tuple(layouts) == ("grouped",):
            check_shape(fn, name, X, (b, k, n, l), "b k n l")  # raises, naming VMamba's layout
        want = {
            "constant": f"(k*d={kd}, n{'' if n is None else f'={n}'}) (constant)",
            "variable": f"(b={b}, n{'' if n is None else f'={n}'}, l={l}) (variable)",
            "grouped": f"(b={b}, k, n{'' if n is None else f'={n}'}, l={l}) (grouped)",
        }
        raise ValueError(
            f"{fn}: `{name}` must have shape {' or '.join(want[s] for s in layouts)}, "
            f"got {tuple(X.shape)}"
        )
    if layout == "constant":
        check_shape(fn, name, X, (kd, n), "k*d n")
        return layout, kd, X.shape[1]
    if layout == "variable":
        check_shape(fn, name, X, (b, n, l), "b n l")
        return layout, 1, X.shape[1]
    check_shape(fn, name, X, (b, k, n, l), "b k n l")
    g = X.shape[1]
    if g < 1 or kd % g != 0:
        raise ValueError(
            f"{fn}: the group count g={g} (dim 1 of `{name}`, VMamba's route count k={g}) must "
            f"divide the channel count k*d={kd} (dim 1 of `u`)"
        )
    return layout, g, X.shape[2]


def check_selective_scan_args(
    fn: str,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    *,
    layouts: Sequence[str] = ("grouped",),
) -> tuple[int, int, int, int, int]:
    """Validate the selective scan's arguments and return `(b, k, d, l, n)`: k groups of d
    channels each in the grouped layout that `to_grouped_projections` makes of B and C.

    u, delta, z (b, k*d, l); A (k*d, n), real; D, delta_bias (k*d,); initial_state (b, k*d, n).
    B and C each in one of `layouts` (`PROJECTION_LAYOUTS`); the default is the kernels' one,
    VMamba's grouped (b, k, n, l). Variable (b, n, l) is k = 1; when B or C is constant (k*d, n),
    k = k*d and d = 1 (one group per channel); a variable B and C share one group count.
    u, delta and a variable or grouped B or C share one dtype; a constant B or C, like A, is a
    parameter of any float dtype. Parameters A, D and delta_bias must be finite.
    """
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_real(fn, name, t)
        check_tensor(fn, name, t)
    check_shape(fn, "u", u, (None, None, None), "b k*d l")
    b, kd, l = u.shape
    if B.dim() == 4:  # VMamba's order: B (b, k, n, l) gives n, A must match
        layout_B, g_B, n = _check_projection(fn, "B", B, layouts, b, kd, l, None, None)
        if n < 1:
            raise ValueError(f"{fn}: the state size n (dim 2 of `B`) must be at least 1, got {n}")
        check_shape(fn, "delta", delta, (b, kd, l), "b k*d l")
        check_shape(fn, "A", A, (kd, n), "k*d n")
    else:  # mamba_ssm's order: A (d, n) gives n, B must match
        check_shape(fn, "delta", delta, (b, kd, l), "b k*d l")
        check_shape(fn, "A", A, (kd, None), "k*d n")
        n = A.shape[1]
        if n < 1:
            raise ValueError(f"{fn}: the state size n (dim 1 of `A`) must be at least 1, got {n}")
        layout_B, g_B, _ = _check_projection(fn, "B", B, layouts, b, kd, l, n, None)
    k_B = g_B if layout_B == "grouped" else None
    layout_C, g_C, _ = _check_projection(fn, "C", C, layouts, b, kd, l, n, k_B)
    if "constant" in (layout_B, layout_C):
        k = kd  # one group per channel
    elif g_B != g_C:
        raise ValueError(
            f"{fn}: `B` has {g_B} group(s) and `C` {g_C}; a variable B and C need one group count"
        )
    else:
        k = g_B
    variable = [(name, t) for name, t, s in (("B", B, layout_B), ("C", C, layout_C)) if s != "constant"]
    check_same_dtype(fn, ("u", "delta", *(s for s, _ in variable)), (u, delta, *(t for _, t in variable)))
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    check_finite(fn, "A", A)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_real(fn, name, t)
            check_tensor(fn, name, t)
            check_shape(fn, name, t, (kd,), "k*d")
            check_finite(fn, name, t)
            tensors[name] = t
    if initial_state is not None:
        check_tensor(fn, "initial_state", initial_state)
        check_shape(fn, "initial_state", initial_state, (b, kd, n), "b k*d n")
        tensors["initial_state"] = initial_state
    if z is not None:
        check_real(fn, "z", z)
        check_tensor(fn, "z", z)
        check_shape(fn, "z", z, (b, kd, l), "b k*d l")
        tensors["z"] = z
    check_same_device(fn, list(tensors), list(tensors.values()))
    return b, k, (kd // k if k else 0), l, n


# ------------------------------------------------------------------------------------------------
# mamba_ssm's selective scan on the kernels' layout: B and C mapped, the gate, the empty scan
# ------------------------------------------------------------------------------------------------


def _to_groups(X: torch.Tensor, k: int, b: int, l: int, dtype: torch.dtype) -> torch.Tensor:
    """One B or C, checked, in the grouped layout (b, k, n, l)."""
    X = X.to(dtype)
    if X.dim() == 2:  # constant: (k*d, n) -> (b, k*d, n, l), k = k*d
        return X[None, :, :, None].expand(b, -1, -1, l)
    X = X if X.dim() == 4 else X[:, None]  # variable: (b, n, l) -> (b, 1, n, l)
    if X.shape[1] == k:
        return X  # (b, k, n, l)
    return X.repeat_interleave(k // X.shape[1], dim=1)  # (b, g, n, l) -> (b, k, n, l)


def to_grouped_projections(
    u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """B and C from any of `PROJECTION_LAYOUTS` in the kernels' grouped layout (b, k, n, l), with
    k from `check_selective_scan_args`; the one mapping, used by every fast backend and by
    `vmamba_fast.compat`.

    grouped (b, g, n, l): as it is when g = k, else each group repeated to its g/k channels (the
    other one is constant); variable (b, n, l): the one group (b, 1, n, l), repeated likewise;
    constant (k*d, n): one group per channel, expanded over b and l. Differentiable: autograd
    sums the gradient of an expanded or repeated B back, as `from_grouped_projection` does.
    Returns u, delta, B, C in one dtype: u's, or the computation dtype when their dtypes differ
    (a float32 constant B beside float16 u, as mamba_ssm's kernel takes them).
    """
    b, _, l = u.shape
    mixed = {delta.dtype, B.dtype, C.dtype} != {u.dtype}
    dtype = compute_dtype(u.dtype) if mixed else u.dtype
    return u.to(dtype), delta.to(dtype), _to_groups(B, k, b, l, dtype), _to_groups(C, k, b, l, dtype)


def from_grouped_projection(grad: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The gradient of B or C in its own layout and dtype, from the gradient (b, k, n, l) of what
    `to_grouped_projections` made of it: the adjoint of the mapping, for code without autograd."""
    if X.dim() == 2:
        return grad.sum((0, 3)).to(X.dtype)  # (b, k*d, n, l) -> (k*d, n)
    b, k, n, l = grad.shape
    g = X.shape[1] if X.dim() == 4 else 1
    grad = grad.reshape(b, g, k // g, n, l).sum(2)  # (b, k, n, l) -> (b, g, n, l)
    return (grad if X.dim() == 4 else grad[:, 0]).to(X.dtype)  # variable: (b, 1, n, l) -> (b, n, l)


def gate(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's gate on the scan's output, `out * silu(z)`, in y's dtype. y, z (b, k*d, l)."""
    return y * F.silu(z.to(y.dtype))


def empty_scan(
    u: torch.Tensor, n: int, initial_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan of an input with no elements (b = 0, k*d = 0 or l = 0), the same on every backend:
    y (b, k*d, l), empty, and the last state h_{-1} carried through no steps: a copy of
    initial_state (differentiable) or zeros (b, k*d, n), both in the computation dtype."""
    dtype = compute_dtype(u.dtype)
    b, kd, l = u.shape
    y = u.new_zeros((b, kd, l), dtype=dtype)  # (b, k*d, l), no elements
    if initial_state is None:
        return y, u.new_zeros((b, kd, n), dtype=dtype)  # (b, k*d, n)
    return y, initial_state.to(dtype, copy=True)  # (b, k*d, n)


def is_kernel_call(u: object, B: object, C: object, z: object) -> bool:
    """Whether a fast backend's public `selective_scan` can hand its call to the kernels as it is
    (which check it themselves): no gate, B and C grouped, u not empty. Every other call goes
    through `scan_any_layout`."""
    return (
        z is None
        and all(isinstance(t, torch.Tensor) for t in (u, B, C))
        and B.dim() == 4  # type: ignore[union-attr]
        and C.dim() == 4  # type: ignore[union-attr]
        and u.numel() > 0  # type: ignore[union-attr]
    )


def scan_any_layout(
    grouped_scan: Callable,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
    return_last_state: bool,
    z: torch.Tensor | None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A backend's `selective_scan` on any layout of B and C, with the gate: check the call,
    answer an empty one with `empty_scan`, map B and C with `to_grouped_projections`, run
    `grouped_scan` (the backend's scan on the grouped layout, the reference's signature) and gate
    its output in torch (differentiable by autograd)."""
    b, k, d, l, n = check_selective_scan_args(
        "selective_scan", u, delta, A, B, C, D, delta_bias, initial_state, z,
        layouts=PROJECTION_LAYOUTS,
    )  # fmt: skip
    if u.numel() == 0:
        y, last_state = empty_scan(u, n, initial_state)  # (b, k*d, l), (b, k*d, n)
    else:
        u, delta, B, C = to_grouped_projections(u, delta, B, C, k)  # B, C (b, k, n, l)
        y, last_state = grouped_scan(
            u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, True
        )  # (b, k*d, l), (b, k*d, n)
    if z is not None:
        y = gate(y, z)  # (b, k*d, l)
    return (y, last_state) if return_last_state else y


def check_grid(fn: str, name: str, x: torch.Tensor, routes: int | None = None) -> None:
    """A feature map (b, d, h, w), or with `routes` a per-route map (b, k, d, h, w)."""
    check_tensor(fn, name, x)
    if routes is None:
        check_shape(fn, name, x, (None, None, None, None), "b d h w")
    else:
        check_shape(fn, name, x, (None, routes, None, None, None), "b k d h w")


def check_ss2d_core_args(
    fn: str,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
) -> tuple[int, int, int, int, int]:
    """Validate the grid layouts of the SS2D core and return `(b, d, h, w, n)`; the scan's own
    check covers dtypes, A, D and delta_bias."""
    check_grid(fn, "x", x)
    b, d, h, w = x.shape
    for name, t in (("delta", delta), ("B", B), ("C", C), ("A", A)):
        check_tensor(fn, name, t)
    check_shape(fn, "delta", delta, (b, ROUTES, d, h, w), "b k d h w")
    check_shape(fn, "B", B, (b, ROUTES, None, h, w), "b k n h w")
    n = B.shape[2]
    check_shape(fn, "C", C, (b, ROUTES, n, h, w), "b k n h w")
    return b, d, h, w, n


# ------------------------------------------------------------------------------------------------
# Backends: the op protocol, its error, and the loader
# ------------------------------------------------------------------------------------------------

BackendName = Literal["ref", "numba", "triton", "torch"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

# backend -> (module whose `OPS` it loads, the package it needs besides torch, or None)
BACKEND_MODULES: dict[str, tuple[str, str | None]] = {
    "ref": ("vmamba_ref", None),  # the readable loops (the oracle): any device
    "numba": ("vmamba_fast.numba", "numba"),  # CPU tensors
    "triton": ("vmamba_fast.triton", "triton"),  # CUDA tensors (the CPU under TRITON_INTERPRET=1)
    "torch": ("vmamba_fast.pytorch", None),  # plain PyTorch, any device: what export traces
}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what to install or pass."""


@dataclass(frozen=True)
class ScanOps:
    """The four operators a backend provides, each with the reference's signature, and how its
    ss2d_core likes delta stored. Every backend takes delta in any strides; with
    `channels_last_steps` its CPU kernels run fastest on a delta stored (b, k, h, w, d) in
    memory, channels innermost, which the network then makes on the CPU
    (`vmamba_ref.ss2d.SS2D.scan`)."""

    name: str
    cross_scan: Callable
    cross_merge: Callable
    selective_scan: Callable
    ss2d_core: Callable
    channels_last_steps: bool = False


def check_backend_name(backend: object) -> str:
    """Return `backend` if it names a backend, else raise ValueError listing the names."""
    if backend not in BACKEND_MODULES:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend  # type: ignore[return-value]


INSTALLED: dict[str, bool] = {
    package: importlib.util.find_spec(package) is not None
    for _, package in BACKEND_MODULES.values()
    if package is not None
}
"""Whether each backend's optional package can be imported, looked up once when this module is
imported (without importing the package). A dict, because `torch.compile` traces a lookup but
not `importlib`; and not a `torch.compiler.assume_constant_result` function, whose decorator
imports dynamo, two seconds of every `import vmamba_ref`."""


def is_available(backend: str) -> bool:
    """True when `backend`'s optional dependency is installed."""
    package = BACKEND_MODULES[check_backend_name(backend)][1]
    return package is None or INSTALLED[package]


def available_backends() -> list[str]:
    """The backends whose dependencies are installed, fastest first."""
    return [name for name in ("numba", "triton", "torch", "ref") if is_available(name)]


def fastest_backend(device: str = "cpu") -> str:
    """The fastest backend installed for `device`: on the CPU numba, else the plain-PyTorch
    parallel scan "torch"; on a GPU triton, else "torch". For programs that pick for the user;
    they should say which one they picked."""
    preferred = "numba" if str(device).startswith("cpu") else "triton"
    return preferred if is_available(preferred) else "torch"


_LOADED: dict[str, ScanOps] = {}


def get_ops(backend: str) -> ScanOps:
    """The scan operators of `backend`, its module imported on first use. The one place a backend
    name is checked: ValueError for an unknown name, BackendUnavailableError (saying what to
    install or pass) when its dependency is missing.

    `torch.compile(fullgraph=True)` traces this when the module is already imported (it reads it
    from `sys.modules`); `vmamba_fast`'s public functions make sure it is, with an import
    statement per backend, so they compile in a process that never loaded the backend."""
    ops = _LOADED.get(backend) if isinstance(backend, str) else None
    if ops is not None:
        return ops
    name, package = BACKEND_MODULES[check_backend_name(backend)]
    if package is not None and not INSTALLED[package]:
        raise BackendUnavailableError(
            f"backend {backend!r} needs the `{package}` package: "
            f"pip install 'vmamba[{backend}]', or pass backend='ref'"
        )
    module = sys.modules.get(name)
    if module is None:
        module = importlib.import_module(name)
    ops = module.OPS
    _LOADED[backend] = ops
    return ops
