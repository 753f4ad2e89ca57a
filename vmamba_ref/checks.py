"""Argument checks shared by every backend, so that bad input fails the same way everywhere.

Each check raises before any computation, naming the function, the argument, what was expected
and what was found. Shape errors are `ValueError`; dtype and type errors are `TypeError`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every element of x is finite. A float32/float64 CPU tensor is read through NumPy:
    the same answer at a third of the cost of two dispatched torch ops, which counts because
    every scan call checks its parameters."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
        return bool(np.isfinite(x.detach().numpy()).all())
    return bool(torch.isfinite(x).all())


def check_finite(fn: str, name: str, x: torch.Tensor) -> None:
    """`x` holds no NaN or infinity (used for parameters, whose non-finite values poison every
    output). Off the CPU, an unchanged tensor already found finite is not read again."""
    if _known_finite(x):
        return
    if not _all_finite(x):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(
            f"{fn}: `{name}` must be finite, found {x[tuple(bad)].item()} at index {tuple(bad)}"
        )
    _remember_finite(x)


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
) -> tuple[int, int, int, int, int]:
    """Validate the selective scan's arguments (VMamba layout) and return `(b, k, d, l, n)`.

    u, delta (b, k*d, l); A (k*d, n); B, C (b, k, n, l); D, delta_bias (k*d,);
    initial_state (b, k*d, n). Parameters A, D and delta_bias must be finite.
    """
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_tensor(fn, name, t)
    check_shape(fn, "u", u, (None, None, None), "b k*d l")
    b, kd, l = u.shape
    check_shape(fn, "B", B, (b, None, None, l), "b k n l")
    _, k, n, _ = B.shape
    if k < 1 or kd % k != 0:
        raise ValueError(
            f"{fn}: the route count k={k} (dim 1 of `B`) must divide the channel count "
            f"k*d={kd} (dim 1 of `u`)"
        )
    if n < 1:
        raise ValueError(f"{fn}: the state size n (dim 2 of `B`) must be at least 1, got {n}")
    d = kd // k
    check_shape(fn, "delta", delta, (b, kd, l), "b k*d l")
    check_shape(fn, "A", A, (kd, n), "k*d n")
    check_shape(fn, "C", C, (b, k, n, l), "b k n l")
    check_same_dtype(fn, ("u", "delta", "B", "C"), (u, delta, B, C))
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    check_finite(fn, "A", A)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(fn, name, t)
            check_shape(fn, name, t, (kd,), "k*d")
            check_finite(fn, name, t)
            tensors[name] = t
    if initial_state is not None:
        check_tensor(fn, "initial_state", initial_state)
        check_shape(fn, "initial_state", initial_state, (b, kd, n), "b k*d n")
        tensors["initial_state"] = initial_state
    check_same_device(fn, list(tensors), list(tensors.values()))
    return b, k, d, l, n


def check_grid(fn: str, name: str, x: torch.Tensor, routes: int | None = None) -> None:
    """A feature map (b, d, h, w), or with `routes` a per-route map (b, k, d, h, w)."""
    check_tensor(fn, name, x)
    if routes is None:
        check_shape(fn, name, x, (None, None, None, None), "b d h w")
    else:
        check_shape(fn, name, x, (None, routes, None, None, None), "b k d h w")
