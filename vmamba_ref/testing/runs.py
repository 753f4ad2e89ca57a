"""Running an implementation and the reference on the same inputs.

The reference operators by name (`REFERENCE_OPS`, `reference_for`), fresh leaf copies of the
inputs for each side (`fresh_copies`, keeping the dtype, device and strides, or cast), results as
a tuple (`as_tuple`), and `Comparison`, the record of one comparison that `compare.py` fills and
`diagnose.py` reads to name the likely bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vmamba_ref.cross_scan import cross_merge, cross_scan
from vmamba_ref.selective_scan import selective_scan
from vmamba_ref.ss2d_core import ss2d_core
from vmamba_ref.testing.mismatch import Rule

REFERENCE_OPS: dict[str, Callable[..., Any]] = {
    "cross_scan": cross_scan,
    "cross_merge": cross_merge,
    "selective_scan": selective_scan,
    "ss2d_core": ss2d_core,
}


def reference_for(op: str | Callable[..., Any]) -> tuple[str, Callable[..., Any]]:
    """`(name, function)` of the reference named by `op`, or of `op` itself when callable."""
    if callable(op):
        return getattr(op, "__name__", type(op).__name__), op
    if op not in REFERENCE_OPS:
        raise ValueError(f"op must be one of {list(REFERENCE_OPS)} or a callable, got {op!r}")
    return op, REFERENCE_OPS[op]


def copy_layout(t: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    """A fresh leaf with `t`'s values, dtype, device and strides; storage gaps of a strided
    layout are NaN. Overlapping layouts (stride 0) come back contiguous."""
    src = t.detach()
    overlapping = any(
        st == 0 and size > 1 for st, size in zip(src.stride(), src.shape, strict=True)
    )
    if src.is_contiguous() or overlapping or src.numel() == 0:
        out = src.clone(memory_format=torch.contiguous_format)
    else:
        span = 1 + sum((size - 1) * st for size, st in zip(src.shape, src.stride(), strict=True))
        base = torch.full((span,), math.nan, dtype=src.dtype, device=src.device)
        out = base.as_strided(src.shape, src.stride())
        out.copy_(src)
    return out.requires_grad_(requires_grad)


def fresh_copies(
    inputs: dict[str, Any], grad_names: Sequence[str], dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Leaf copies of the tensor inputs, requiring grad for `grad_names`: cast to `dtype` if
    given, else in the same dtype, device and strides (`copy_layout`)."""
    out = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            if dtype is not None and value.is_floating_point():
                value = value.detach().to(dtype).requires_grad_(name in grad_names)
            else:
                value = copy_layout(value, name in grad_names)
        out[name] = value
    return out


def as_tuple(out: Any) -> tuple[Any, ...]:
    """An operator's result as a tuple of outputs."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@dataclass
class Comparison:
    """Everything one comparison computed, for the report and for `diagnose.py`."""

    fn_name: str
    op_name: str
    reference: Callable[..., Any]
    inputs: dict[str, Any]
    fn_out: tuple[torch.Tensor, ...]
    ref_out: tuple[torch.Tensor, ...]  # float64
    output_rules: list[Rule]
    output_problems: list[str]
    grad_problems: dict[str, str]
    grad_names: list[str]
    nan_fill: bool
