"""NaN-filled fresh buffers, so that a kernel which forgets to write an output element fails.

`torch.empty` hands out whatever memory the allocator had: often zeros, often the previous
tensor's values, so an output element that a kernel never writes can look right by accident.
While `nan_filled_empty()` is active, every floating-point buffer from `torch.empty`,
`torch.empty_like`, `torch.empty_strided`, `Tensor.new_empty`, `numpy.empty` and
`numpy.empty_like` starts as NaN, and an unwritten element shows up as a NaN in the output.
Integer and boolean buffers are left as they are (they have no NaN).

flash-linear-attention's test suite does the same for its Triton kernels, and like it this
module can limit the fill to buffers allocated by given packages (`callers=`), so that a
project-wide fixture poisons the kernels' allocations but not those of torch.nn or of the tests,
and it leaves graph capture alone (torch.compile, torch.jit tracing). The patch is process-wide
for the duration of the `with` block, so it is not meant for multi-threaded code, and it reaches
only callers that look the factory up at call time (`torch.empty(...)`, not a
`from torch import empty` made before the block).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

_TORCH_FACTORIES = ("empty", "empty_like", "empty_strided")
_NUMPY_FACTORIES = ("empty", "empty_like")


def _capturing() -> bool:
    """True while torch.compile or torch.jit records a graph (a fill would enter the graph)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _wanted(callers: tuple[str, ...] | None) -> bool:
    """Whether the factory's caller is in `callers`: the first frame above this module's own
    (a nested block's wrapper calls the outer wrapper)."""
    if callers is None:
        return True
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    module = "" if frame is None else frame.f_globals.get("__name__", "")
    return any(module == c or module.startswith(c + ".") for c in callers)


def _fill_torch(
    factory: Callable[..., torch.Tensor], callers: tuple[str, ...] | None
) -> Callable[..., torch.Tensor]:
    @functools.wraps(factory)
    def filled(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = factory(*args, **kwargs)
        if (out.is_floating_point() or out.is_complex()) and _wanted(callers) and not _capturing():
            with torch.no_grad():  # the buffer may have been created with requires_grad=True
                out.fill_(float("nan"))
        return out

    return filled


def _fill_numpy(
    factory: Callable[..., np.ndarray], callers: tuple[str, ...] | None
) -> Callable[..., np.ndarray]:
    @functools.wraps(factory)
    def filled(*args: Any, **kwargs: Any) -> np.ndarray:
        out = factory(*args, **kwargs)
        if out.dtype.kind in "fc" and _wanted(callers):
            out.fill(np.nan)
        return out

    return filled


@contextmanager
def nan_filled_empty(callers: Sequence[str] | None = None, numpy: bool = True) -> Iterator[None]:
    """Within the block, fresh floating-point buffers from the `empty` factories are NaN.

    Args:
        callers: fill only buffers allocated by code in these packages or modules, e.g.
            `("vmamba_fast",)`; None fills every buffer.
        numpy: also patch `numpy.empty` and `numpy.empty_like` (Numba kernels often allocate
            their outputs with them in the Python launcher).

    Blocks nest; leaving one restores exactly the factories that were there on entry.
    """
    scope = None if callers is None else tuple(callers)
    targets: list[tuple[object, str, Callable[..., Any]]] = [
        (torch, name, _fill_torch) for name in _TORCH_FACTORIES
    ]
    targets.append((torch.Tensor, "new_empty", _fill_torch))
    if numpy:
        targets.extend((np, name, _fill_numpy) for name in _NUMPY_FACTORIES)
    # torch caches the factory functions that a `with torch.device(...)` block redirects the
    # first time such a block is used; prime that cache with the real factories, or every later
    # device block in the process would miss the patched (and then restored) ones.
    with torch.device("meta"):
        torch.empty(0)
    patched: list[tuple[object, str, Any]] = []
    try:
        for owner, name, wrap in targets:
            original = getattr(owner, name)
            patched.append((owner, name, original))
            setattr(owner, name, wrap(original, scope))
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
