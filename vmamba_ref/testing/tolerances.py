"""The one tolerance table: how close a fast result must be to the reference, per backend and dtype.

Every comparison in the project's tests and in the test kit reads its numbers from here
(tests/test_tolerance_table.py fails on a literal `rtol=` or `atol=` in a test).
float64 and float32 results are compared with `|fast - ref| <= atol + rtol * |ref|`, the reference
computed in float64. float16 and bfloat16 inputs are judged by the relative rule used by
flash-attention and Mamba: `max|fast - ref64| <= 2 * max|ref_lowp - ref64| + atol`, where
ref_lowp is the reference run on the same rounded inputs in the low-precision pipeline.

`TOLERANCES` is keyed by `(backend, dtype)`: one row per backend of `vmamba_ref.contract.BACKENDS`
("ref", "numba", "triton", "torch") and the row `ANY_BACKEND` for a kernel from none of them,
such as a user's kernel under the test kit; one column per floating dtype, the dtype of the
inputs. Every row holds the same numbers today; a backend that needs others gets its own
entries, with the reason beside them.

Comparisons that are not a kernel against the reference (two float64 spellings of one formula, a
model's logits in bfloat16, a resumed training run, an ONNX export) have their own named entries
below the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vmamba_ref.contract import BACKENDS


@dataclass(frozen=True)
class Tolerance:
    """`|fast - ref| <= atol + rtol * |ref|`, elementwise."""

    rtol: float
    atol: float

    def relative(self) -> Tolerance:
        """The same `rtol` with no absolute floor, `|fast - ref| <= rtol * |ref|`: for results
        that must be right in their leading digits however small they are (a math function on
        its domain, a scan whose tiling must not matter)."""
        return Tolerance(self.rtol, 0.0)


ANY_BACKEND = "any"  # a kernel from none of the named backends: the default row
FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# A kernel's forward outputs against the float64 reference, by input dtype. Gradients use
# GRAD_FACTOR times these (they sum over l and batch).
_KERNEL: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-9, atol=1e-10),
    torch.float32: Tolerance(rtol=2e-4, atol=2e-5),
    torch.bfloat16: Tolerance(rtol=0.0, atol=5e-2),
    torch.float16: Tolerance(rtol=0.0, atol=5e-3),
}
GRAD_FACTOR = 10.0

TOLERANCES: dict[tuple[str, torch.dtype], Tolerance] = {
    (backend, dtype): _KERNEL[dtype]
    for backend in (ANY_BACKEND, *BACKENDS)
    for dtype in FLOAT_DTYPES
}


def tolerance(dtype: torch.dtype, grad: bool = False, *, backend: str = ANY_BACKEND) -> Tolerance:
    """The tolerance for `backend`'s results computed from inputs of `dtype` (forward outputs,
    or gradients when `grad`)."""
    if (backend, dtype) not in TOLERANCES:
        backends = sorted({b for b, _ in TOLERANCES})
        dtypes = sorted({str(d) for b, d in TOLERANCES if b == backend})
        if not dtypes:
            raise KeyError(f"no tolerances for backend {backend!r}; known: {backends}")
        raise KeyError(f"no tolerance for {backend!r} and dtype {dtype}; known: {dtypes}")
    tol = TOLERANCES[backend, dtype]
    return Tolerance(tol.rtol * GRAD_FACTOR, tol.atol * GRAD_FACTOR) if grad else tol


# ------------------------------------------------------------ not a kernel against the reference

FLOAT64_REWRITE = Tolerance(rtol=1e-12, atol=1e-12)
"""Two float64 computations of one formula, written differently: the reference against a
textbook loop or against the official VMamba code's composition of its operators, a scan against
the same scan split in two with the carried state, a parallel recurrence against its loop. Only
the order of the roundings differs, so this is far tighter than any kernel's float64 entry."""

LOW_PRECISION_LOGITS = Tolerance(rtol=0.0, atol=0.1)
"""`vmamba_mini`'s logits with the whole model cast to bfloat16, or run under bfloat16 autocast,
against the same weights in float32: every layer rounds to 8 bits of mantissa, so this bounds
the whole network's drift, not one kernel's error."""

RESUMED_TRAINING = Tolerance(rtol=1e-5, atol=1e-6)
"""Weights after a training run stopped and resumed from its checkpoint, against an
uninterrupted run of the same steps: float32 arithmetic in both, equal up to rounding."""

ONNX_LOGITS = Tolerance(rtol=0.0, atol=1e-3)
"""VMamba-T's float32 logits from onnxruntime against PyTorch's, as a max abs difference: the bar
the ONNX export was set, over a 224x224 image and the full network."""


# ------------------------------------------------------------ a user's looser tolerance

ToleranceOverride = Tolerance | dict[torch.dtype, Tolerance]


def loosened(
    override: ToleranceOverride | None, dtype: torch.dtype
) -> tuple[Tolerance, str | None]:
    """The forward tolerance for `dtype` with a user's `override`: `(tolerance, warning)`.

    An override may only be looser than the table (rtol and atol each at least the table's):
    the table is the bar every kernel is held to, and a tighter number would fail kernels the
    project calls correct. A looser one is allowed, with a warning line for the report.
    A dict override without `dtype` leaves the table's entry.

    Raises:
        ValueError: when the override is tighter than the table in rtol or atol.
    """
    table = tolerance(dtype)
    if isinstance(override, dict):
        override = override.get(dtype)
    if override is None or override == table:
        return table, None
    if override.rtol < table.rtol or override.atol < table.atol:
        raise ValueError(
            f"tolerance {override} is tighter than the table's {table} for {dtype}: a per-call "
            "tolerance may only loosen the table (vmamba_ref.testing.tolerances), since the "
            "table is the bar every kernel is held to; drop it, or loosen it"
        )
    warning = (
        f"warning: tolerance loosened for {dtype} to rtol={override.rtol:g}, "
        f"atol={override.atol:g} (table: rtol={table.rtol:g}, atol={table.atol:g}); "
        f"gradients use {GRAD_FACTOR:g} times these"
    )
    return override, warning
