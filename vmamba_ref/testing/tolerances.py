"""The one tolerance table: how close a fast result must be to the reference, per backend and dtype.

Every comparison in the project's tests and in the test kit reads its numbers from here.
float64 and float32 results are compared with `|fast - ref| <= atol + rtol * |ref|`, the reference
computed in float64. float16 and bfloat16 inputs are judged by the relative rule used by
flash-attention and Mamba: `max|fast - ref_fp32| <= 2 * max|ref_lowp - ref_fp32| + atol`, where
ref_lowp is the reference run on the same rounded inputs in the low-precision pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """`|fast - ref| <= atol + rtol * |ref|`, elementwise."""

    rtol: float
    atol: float


# Forward outputs. Gradients use GRAD_FACTOR times these (they sum over l and batch).
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-9, atol=1e-10),
    torch.float32: Tolerance(rtol=2e-4, atol=2e-5),
    torch.bfloat16: Tolerance(rtol=0.0, atol=5e-2),
    torch.float16: Tolerance(rtol=0.0, atol=5e-3),
}
GRAD_FACTOR = 10.0


def tolerance(dtype: torch.dtype, grad: bool = False) -> Tolerance:
    """The tolerance for results computed from inputs of `dtype` (forward, or gradients)."""
    if dtype not in TOLERANCES:
        raise KeyError(f"no tolerance for dtype {dtype}; known: {list(TOLERANCES)}")
    tol = TOLERANCES[dtype]
    return Tolerance(tol.rtol * GRAD_FACTOR, tol.atol * GRAD_FACTOR) if grad else tol
