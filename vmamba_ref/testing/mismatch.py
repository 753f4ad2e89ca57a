"""How far a result may be from the reference, and the report of where it is farther.

`Rule` turns a `Tolerance` from `tolerances.py` into an allowed error per element: elementwise
`atol + rtol * |ref|` for float32/float64 inputs, or one bound on the largest error for
float16/bfloat16 inputs (`low_precision_rule`, flash-attention's and Mamba's rule).
`mismatch_report` applies a rule to one tensor and describes every way it fails: how many
elements, max and mean abs error, the first bad indices with both values, NaN/inf mismatches.

`compare.py` reports with these; `diagnose.py` uses them to test its guesses at the cause.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vmamba_ref.testing.tolerances import Tolerance

FIRST_BAD = 5  # how many bad elements a report lists


@dataclass(frozen=True)
class Rule:
    """How far a result may be from the float64 reference: elementwise `atol + rtol * |ref|`,
    or, for low-precision inputs, one bound on the largest error."""

    tol: Tolerance
    bound: float | None = None
    baseline: float | None = None  # max|ref_lowp - ref64| behind `bound`

    def allowed(self, ref: torch.Tensor) -> torch.Tensor | float:
        """Allowed abs error per element of `ref` (float64)."""
        if self.bound is not None:
            return self.bound
        return self.tol.atol + self.tol.rtol * ref.abs()

    def describe(self) -> str:
        """The rule in words, for a report."""
        if self.bound is not None:
            return (
                f"low-precision rule: max error <= 2 * {self.baseline:.3e} + {self.tol.atol:g} "
                f"= {self.bound:.3e}"
            )
        return f"|fn - ref| <= {self.tol.atol:g} + {self.tol.rtol:g} * |ref|"


def low_precision_rule(tol: Tolerance, ref_lowp: torch.Tensor, ref64: torch.Tensor) -> Rule:
    """The flash-attention rule: allow twice the error of the reference's own low-precision run."""
    diff = (as_float64(ref_lowp) - as_float64(ref64)).abs()
    baseline = float(diff.max()) if diff.numel() else 0.0
    if math.isnan(baseline):
        baseline = math.inf
    return Rule(tol, bound=2.0 * baseline + tol.atol, baseline=baseline)


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """`t` detached, on the CPU, in float64: how every comparison reads a result."""
    return t.detach().to(device="cpu", dtype=torch.float64)


def _index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape)))


def _where(mask: torch.Tensor) -> str:
    first = _index(int(mask.flatten().nonzero()[0]), mask.shape)
    return f"{int(mask.sum())} element(s), first at {first}"


def mismatch_report(
    name: str, actual: torch.Tensor, expected: torch.Tensor, rule: Rule
) -> str | None:
    """None when `actual` matches `expected` under `rule`; else a multi-line report: count of bad
    elements, max and mean abs error, the first bad indices with both values, NaN/inf mismatches."""
    if tuple(actual.shape) != tuple(expected.shape):
        return f"{name}: shape {tuple(actual.shape)}, reference {tuple(expected.shape)}"
    a, e = as_float64(actual), as_float64(expected)
    nan_a, nan_e = a.isnan(), e.isnan()
    finite = a.isfinite() & e.isfinite()
    inf_bad = (a.isinf() | e.isinf()) & ~nan_a & ~nan_e & (a != e)
    err = torch.where(finite, (a - e).abs(), torch.zeros((), dtype=torch.float64))
    bad = (finite & (err > rule.allowed(e))) | (nan_a != nan_e) | inf_bad
    if not bool(bad.any()):
        return None
    digits = ".17g" if actual.dtype == torch.float64 else ".7g"  # float64: every digit counts
    lines = [f"{name}: {int(bad.sum())} of {bad.numel()} elements differ ({rule.describe()})"]
    nonfinite_bad = bad & ~finite
    if bool(finite.any()):
        worst = _index(int(err.flatten().argmax()), err.shape)
        lines.append(
            f"  max abs error {float(err.max()):.3e} at {worst} (fn {float(a[worst]):{digits}}, "
            f"reference {float(e[worst]):{digits}}); mean abs error "
            f"{float(err[finite].mean()):.3e}"
            + (" (over the finite elements)" if bool(nonfinite_bad.any()) else "")
        )
    if bool(nonfinite_bad.any()):
        count = int(nonfinite_bad.sum())
        lines.append(
            f"  {count} non-finite mismatch{'es' if count > 1 else ''} (NaN or inf on one side), "
            "not in the max and mean error"
        )
    lines.append("  first bad elements:")
    for flat in bad.flatten().nonzero()[:FIRST_BAD, 0].tolist():
        i = _index(flat, bad.shape)
        lines.append(f"    {i}: fn {float(a[i]):{digits}}, reference {float(e[i]):{digits}}")
    if bool((nan_a & ~nan_e).any()):
        lines.append(f"  NaN in fn but not in the reference: {_where(nan_a & ~nan_e)}")
    if bool((nan_e & ~nan_a).any()):
        lines.append(f"  NaN in the reference but not in fn: {_where(nan_e & ~nan_a)}")
    if bool(inf_bad.any()):
        lines.append(
            f"  inf mismatch (fn and reference differ, one being infinite): {_where(inf_bad)}"
        )
    return "\n".join(lines)
