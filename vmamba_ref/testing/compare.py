"""Compare any implementation of a scan operator with the reference, on one set of inputs.

`assert_matches_reference(fn, inputs, op=...)` runs the user's `fn` on the inputs as given and
the reference on the same values upcast to float64, then compares every output and, when asked,
every gradient, with the numbers in `tolerances.py`:

- float32/float64 inputs: `|fast - ref64| <= atol + rtol * |ref64|` elementwise.
- float16/bfloat16 inputs: `max|fast - ref64| <= 2 * max|ref_lowp - ref64| + atol`, where
  ref_lowp is the reference run on the same low-precision inputs without the upcast, i.e. the
  error a faithful low-precision pipeline makes (flash-attention's and Mamba's rule).

Gradients use a random cotangent (seeded, so a failure replays) for every floating output, the
same for both sides, and compare the gradient of every floating input that requires grad.

A failure raises AssertionError listing each tensor that differs: how many elements, max and
mean abs error, the first bad indices with both values, NaN/inf mismatches; shape or dtype
mismatches; inputs that `fn` modified in place; and, from `diagnose.py`, the likely cause
(a dropped D, a wrong route order, an unwritten element, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from vmamba_ref.cross_scan import cross_merge, cross_scan
from vmamba_ref.selective_scan import selective_scan
from vmamba_ref.ss2d_core import ss2d_core
from vmamba_ref.testing.cases import LOW_PRECISION, KernelInputs, describe_inputs
from vmamba_ref.testing.nan_buffers import nan_filled_empty
from vmamba_ref.testing.tolerances import Tolerance, tolerance

REFERENCE_OPS: dict[str, Callable[..., Any]] = {
    "cross_scan": cross_scan,
    "cross_merge": cross_merge,
    "selective_scan": selective_scan,
    "ss2d_core": ss2d_core,
}
FIRST_BAD = 5  # how many bad elements a report lists


def reference_for(op: str | Callable[..., Any]) -> tuple[str, Callable[..., Any]]:
    """`(name, function)` of the reference named by `op`, or of `op` itself when callable."""
    if callable(op):
        return getattr(op, "__name__", type(op).__name__), op
    if op not in REFERENCE_OPS:
        raise ValueError(f"op must be one of {list(REFERENCE_OPS)} or a callable, got {op!r}")
    return op, REFERENCE_OPS[op]


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
    diff = (_f64(ref_lowp) - _f64(ref64)).abs()
    baseline = float(diff.max()) if diff.numel() else 0.0
    if math.isnan(baseline):
        baseline = math.inf
    return Rule(tol, bound=2.0 * baseline + tol.atol, baseline=baseline)


def _f64(t: torch.Tensor) -> torch.Tensor:
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
    a, e = _f64(actual), _f64(expected)
    nan_a, nan_e = a.isnan(), e.isnan()
    finite = a.isfinite() & e.isfinite()
    inf_bad = (a.isinf() | e.isinf()) & ~nan_a & ~nan_e & (a != e)
    err = torch.where(finite, (a - e).abs(), torch.zeros((), dtype=torch.float64))
    bad = (finite & (err > rule.allowed(e))) | (nan_a != nan_e) | inf_bad
    if not bool(bad.any()):
        return None
    lines = [f"{name}: {int(bad.sum())} of {bad.numel()} elements differ ({rule.describe()})"]
    if bool(finite.any()):
        worst = _index(int(err.flatten().argmax()), err.shape)
        lines.append(
            f"  max abs error {float(err.max()):.3e} at {worst} (fn {float(a[worst]):.7g}, "
            f"reference {float(e[worst]):.7g}); mean abs error {float(err[finite].mean()):.3e}"
        )
    lines.append("  first bad elements:")
    for flat in bad.flatten().nonzero()[:FIRST_BAD, 0].tolist():
        i = _index(flat, bad.shape)
        lines.append(f"    {i}: fn {float(a[i]):.7g}, reference {float(e[i]):.7g}")
    if bool((nan_a & ~nan_e).any()):
        lines.append(f"  NaN in fn but not in the reference: {_where(nan_a & ~nan_e)}")
    if bool((nan_e & ~nan_a).any()):
        lines.append(f"  NaN in the reference but not in fn: {_where(nan_e & ~nan_a)}")
    if bool(inf_bad.any()):
        lines.append(
            f"  inf mismatch (fn and reference differ, one being infinite): {_where(inf_bad)}"
        )
    return "\n".join(lines)


def primary_dtype(inputs: dict[str, Any]) -> torch.dtype:
    """The dtype that picks the tolerance: that of the first floating tensor argument
    (u, x or ys for the scan operators)."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    raise ValueError("inputs hold no floating-point tensor")


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


def _output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output[{i}]" for i in range(n)]


def _grads(
    outputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
    leaves: Sequence[torch.Tensor],
) -> list[torch.Tensor | None]:
    pairs = [(o, c) for o, c in zip(outputs, cotangents, strict=True) if o.requires_grad]
    grads = torch.autograd.grad(
        [o for o, _ in pairs], list(leaves), [c for _, c in pairs], allow_unused=True
    )
    return list(grads)


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


def assert_matches_reference(
    fn: Callable[..., Any],
    inputs: dict[str, Any],
    *,
    op: str | Callable[..., Any],
    check_grad: bool | None = False,
    nan_fill: bool = True,
    seed: int = 0,
) -> bool:
    """Assert that `fn(**inputs)` matches the reference `op` (forward, and gradients if asked).

    Args:
        fn: the implementation under test, with the reference's signature.
        inputs: keyword arguments for both, e.g. a draw from `strategies.selective_scan_inputs`.
            `fn` receives fresh copies with the same dtypes, devices and strides.
        op: "cross_scan", "cross_merge", "selective_scan", "ss2d_core", or a reference callable
            with `fn`'s signature.
        check_grad: True: compare the gradients of every floating input that requires grad (of
            all floating inputs if none does); `fn` must support autograd. None: the same, when
            `fn`'s output carries a grad_fn, and only for inputs that require grad. False:
            forward only, and `fn` receives inputs that do not require grad.
        nan_fill: run `fn` (and its backward) with NaN-filled `empty` buffers
            (`nan_buffers.nan_filled_empty`), so an unwritten output element fails.
        seed: seed of the random cotangent.

    Returns:
        True when gradients were compared.

    Raises:
        AssertionError: with the mismatch report.
    """
    from vmamba_ref.testing.diagnose import likely_causes

    op_name, reference = reference_for(op)
    fn_name = getattr(fn, "__name__", type(fn).__name__)
    dtype = primary_dtype(inputs)
    tol, grad_tol = tolerance(dtype), tolerance(dtype, grad=True)
    low = dtype in LOW_PRECISION
    floating = [
        k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]
    if check_grad is False:
        grad_names: list[str] = []
    else:
        grad_names = [k for k in floating if inputs[k].requires_grad]
        if check_grad and not grad_names:
            grad_names = floating
    header = (
        f"{fn_name} does not match the reference {op_name}\n  inputs: {describe_inputs(inputs)}"
    )
    if isinstance(inputs, KernelInputs):
        header += f"\n  rebuild with: {inputs!r}"

    ref_inputs = fresh_copies(inputs, grad_names, torch.float64)
    ref_out = as_tuple(reference(**ref_inputs))  # float64
    if dtype == torch.float64:
        native_inputs, native_out = ref_inputs, ref_out
    else:
        native_inputs = fresh_copies(inputs, grad_names if low else [])
        with torch.set_grad_enabled(low and bool(grad_names)):
            native_out = as_tuple(reference(**native_inputs))  # the reference in inputs' dtypes

    fn_inputs = fresh_copies(inputs, grad_names)
    before = {k: v.detach().clone() for k, v in fn_inputs.items() if isinstance(v, torch.Tensor)}
    try:
        with nan_filled_empty() if nan_fill else nullcontext():
            fn_out = as_tuple(fn(**fn_inputs))
    except Exception as err:
        autograd = grad_names and "grad" in str(err)
        hint = " (pass check_grad=False if fn does not support autograd)" if autograd else ""
        raise AssertionError(
            f"{header}\n{fn_name} raised {type(err).__name__}: {err}{hint}"
        ) from err

    structure = _structure_problems(fn_out, native_out)
    if structure:
        raise AssertionError(header + "\n" + "\n".join(structure))

    names = _output_names(len(ref_out))
    rules = [
        low_precision_rule(tol, n, r) if low else Rule(tol)
        for n, r in zip(native_out, ref_out, strict=True)
    ]
    output_problems = [
        p
        for name, f, r, rule in zip(names, fn_out, ref_out, rules, strict=True)
        if (p := mismatch_report(name, f, r, rule)) is not None
    ]

    grad_problems: dict[str, str] = {}
    compared = False
    if grad_names:
        fn_needs = [o.requires_grad for o in fn_out]
        if not any(fn_needs):
            if check_grad:
                raise AssertionError(
                    f"{header}\n{fn_name}'s output does not require grad although its inputs "
                    "do: fn does not support autograd (pass check_grad=False to test the "
                    "forward pass only)"
                )
        else:
            compared = True
            gen = torch.Generator().manual_seed(seed)
            cotangents = [  # the same values for both sides, rounded to fn's output dtype
                torch.rand(r.shape, generator=gen, dtype=torch.float64)
                .mul(2)
                .sub(1)
                .to(device=r.device, dtype=n.dtype)
                for r, n in zip(ref_out, native_out, strict=True)
            ]
            try:
                with nan_filled_empty() if nan_fill else nullcontext():
                    fn_grads = _grads(
                        fn_out,
                        [c.to(o.device) for c, o in zip(cotangents, fn_out, strict=True)],
                        [fn_inputs[k] for k in grad_names],
                    )
            except Exception as err:
                raise AssertionError(
                    f"{header}\n{fn_name}'s backward raised {type(err).__name__}: {err}"
                ) from err
            ref_grads = _grads(
                ref_out,
                [c.to(torch.float64) for c in cotangents],
                [ref_inputs[k] for k in grad_names],
            )
            native_grads = (
                _grads(native_out, cotangents, [native_inputs[k] for k in grad_names])
                if low
                else ref_grads
            )
            for k, g_fn, g_ref, g_low in zip(
                grad_names, fn_grads, ref_grads, native_grads, strict=True
            ):
                problem = _grad_problem(k, inputs[k], g_fn, g_ref, g_low, grad_tol, low)
                if problem is not None:
                    grad_problems[k] = problem
            for i, needs in enumerate(fn_needs):
                if not needs and ref_out[i].requires_grad:
                    grad_problems.setdefault(
                        f"({names[i]})",
                        f"{names[i]} of fn does not require grad: no gradient flows back through it",
                    )

    changed = [
        k
        for k, v in before.items()
        if not bool(
            ((fn_inputs[k].detach() == v) | (fn_inputs[k].detach().isnan() & v.isnan())).all()
        )
    ]
    problems = output_problems + list(grad_problems.values())
    if changed:
        problems.append(f"fn modified its input(s) {', '.join(changed)} in place")
    if problems:
        comparison = Comparison(
            fn_name,
            op_name,
            reference,
            inputs,
            fn_out,
            ref_out,
            rules,
            output_problems,
            grad_problems,
            grad_names,
            nan_fill,
        )
        causes = likely_causes(fn, op, comparison)
        text = header + "\n" + "\n".join(problems)
        if causes:
            text += "\nlikely cause:\n" + "\n".join(f"  - {c}" for c in causes)
        raise AssertionError(text)
    return compared


def _structure_problems(fn_out: tuple[Any, ...], native_out: tuple[Any, ...]) -> list[str]:
    """Output count, type, shape and dtype checks; values cannot be compared if these fail."""
    if len(fn_out) != len(native_out):
        return [f"fn returned {len(fn_out)} output(s), the reference {len(native_out)}"]
    problems = []
    for name, f, r in zip(_output_names(len(native_out)), fn_out, native_out, strict=True):
        if not isinstance(f, torch.Tensor):
            problems.append(f"{name}: fn returned {type(f).__name__}, the reference a tensor")
            continue
        if tuple(f.shape) != tuple(r.shape):
            problems.append(
                f"{name}: shape mismatch, fn {tuple(f.shape)}, reference {tuple(r.shape)}"
            )
        if f.dtype != r.dtype:
            problems.append(f"{name}: dtype mismatch, fn {f.dtype}, reference {r.dtype}")
    return problems


def _grad_problem(
    name: str,
    leaf: torch.Tensor,
    g_fn: torch.Tensor | None,
    g_ref: torch.Tensor | None,
    g_low: torch.Tensor | None,
    tol: Tolerance,
    low: bool,
) -> str | None:
    label = f"gradient of `{name}`"
    zeros = torch.zeros(leaf.shape, dtype=torch.float64)
    g_ref = zeros if g_ref is None else g_ref
    if g_fn is None:
        if bool((_f64(g_ref) != 0).any()):
            return f"{label}: fn gives none (it does not flow back to `{name}`), the reference does"
        return None
    rule = low_precision_rule(tol, zeros if g_low is None else g_low, g_ref) if low else Rule(tol)
    return mismatch_report(label, g_fn, g_ref, rule)
