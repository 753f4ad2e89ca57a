"""Compare any implementation of a scan operator with the reference, on one set of inputs.

`assert_matches_reference(fn, inputs, op=...)` runs the user's `fn` on the inputs as given and
the reference on the same values upcast to float64, then compares every output and, when asked,
every gradient, with the numbers in `tolerances.py` (`mismatch.py` applies them):

- float32/float64 inputs: `|fast - ref64| <= atol + rtol * |ref64|` elementwise.
- float16/bfloat16 inputs: `max|fast - ref64| <= 2 * max|ref_lowp - ref64| + atol`, where
  ref_lowp is the reference run on the same low-precision inputs without the upcast, i.e. the
  error a faithful low-precision pipeline makes (flash-attention's and Mamba's rule). The
  reference returns its compute dtype (float32); a kernel may return its input dtype instead,
  as mamba_ssm and VMamba's non-oflex kernels do: then ref_lowp is rounded to that dtype too,
  every comparison reads both sides in float64, and the result notes the dtype.

Gradients use a random cotangent (seeded, so a failure replays) for every floating output, the
same for both sides, and compare the gradient of every floating input that requires grad. An
output that `fn` returns without grad (mamba_ssm's last state is detached) is one the kit does
not backpropagate through, on either side; the result notes it.

`deterministic=True` also runs `fn` (and its backward) a second time on the same inputs and
requires bit-identical results: an order-dependent reduction (atomic adds into dB, dC) passes
every tolerance and still makes training irreproducible.

A failure raises AssertionError listing each tensor that differs: how many elements, max and
mean abs error, the first bad indices with both values, NaN/inf mismatches; shape or dtype
mismatches; inputs that `fn` modified in place; and, from `diagnose.py`, the likely cause
(a dropped D, a wrong route order, an unwritten element, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from vmamba_ref.testing.cases import LOW_PRECISION, KernelInputs, describe_inputs
from vmamba_ref.testing.diagnose import likely_causes
from vmamba_ref.testing.mismatch import Rule, as_float64, low_precision_rule, mismatch_report
from vmamba_ref.testing.nan_buffers import nan_filled_empty
from vmamba_ref.testing.runs import Comparison, as_tuple, fresh_copies, reference_for
from vmamba_ref.testing.tolerances import GRAD_FACTOR, Tolerance, ToleranceOverride, loosened


@dataclass(frozen=True)
class Compared:
    """What one passing comparison covered."""

    gradients: bool  # whether gradients were compared
    not_backpropagated: tuple[str, ...] = ()  # outputs fn returns without grad, e.g. "output[1]"
    notes: tuple[str, ...] = ()  # e.g. an output dtype other than the reference's


def assert_matches_reference(
    fn: Callable[..., Any],
    inputs: dict[str, Any],
    *,
    op: str | Callable[..., Any],
    check_grad: bool | None = False,
    nan_fill: bool = True,
    seed: int = 0,
    tolerance: ToleranceOverride | None = None,
    deterministic: bool = False,
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
        tolerance: a Tolerance (or one per dtype) looser than the table's for these inputs;
            it warns, and the report says so. Gradients use GRAD_FACTOR times it.
        deterministic: also run `fn` a second time (and its backward) and require bit-identical
            outputs and gradients.

    Returns:
        True when gradients were compared (`compare_with_reference` returns the details).

    Raises:
        AssertionError: with the mismatch report.
        ValueError: when `tolerance` is tighter than the table.
    """
    return compare_with_reference(
        fn,
        inputs,
        op=op,
        check_grad=check_grad,
        nan_fill=nan_fill,
        seed=seed,
        tolerance=tolerance,
        deterministic=deterministic,
    ).gradients


def compare_with_reference(
    fn: Callable[..., Any],
    inputs: dict[str, Any],
    *,
    op: str | Callable[..., Any],
    check_grad: bool | None = False,
    nan_fill: bool = True,
    seed: int = 0,
    tolerance: ToleranceOverride | None = None,
    deterministic: bool = False,
) -> Compared:
    """`assert_matches_reference`, returning what it compared: whether gradients, which outputs
    fn returns without grad (not backpropagated through), and notes such as an output dtype
    other than the reference's."""
    op_name, reference = reference_for(op)
    fn_name = getattr(fn, "__name__", type(fn).__name__)
    dtype = primary_dtype(inputs)
    tol, loosening = loosened(tolerance, dtype)
    grad_tol = Tolerance(tol.rtol * GRAD_FACTOR, tol.atol * GRAD_FACTOR)
    low = dtype in LOW_PRECISION
    grad_names = _gradient_inputs(inputs, check_grad)
    header = _report_header(fn_name, op_name, inputs)
    if loosening is not None:
        warnings.warn(loosening, stacklevel=2)
        header += "\n  " + loosening

    ref = _run_reference(reference, inputs, grad_names, dtype)
    fn_inputs = fresh_copies(inputs, grad_names)
    before = {k: v.detach().clone() for k, v in fn_inputs.items() if isinstance(v, torch.Tensor)}
    fn_out = _run_fn(fn, fn_inputs, header, fn_name, grad_names, nan_fill)
    structure, notes = _structure_problems(fn_out, ref.native_out, dtype)
    if structure:
        raise AssertionError(header + "\n" + "\n".join(structure))

    rules = _output_rules(tol, ref, low, fn_out)
    output_problems = _output_problems(fn_out, ref.out64, rules)
    compared = bool(grad_names) and _has_gradients(fn_out, header, fn_name, check_grad)
    through = [o.requires_grad for o in fn_out]  # the outputs gradients flow back through
    cotangents = _cotangents(ref, seed, fn_out) if compared else []
    backward = _Backward(grad_names, cotangents, through, nan_fill)
    fn_grads = (
        backward.run(fn_out, fn_inputs, f"{header}\n{fn_name}'s backward") if compared else []
    )
    grad_problems = (
        _gradient_problems(fn_grads, ref, inputs, backward, grad_tol, low=low) if compared else {}
    )

    problems = output_problems + list(grad_problems.values())
    changed = _modified_inputs(before, fn_inputs)
    if changed:
        problems.append(f"fn modified its input(s) {', '.join(changed)} in place")
    nondeterministic = (
        _nondeterminism(fn, inputs, fn_out, fn_grads, backward, header, fn_name, compared)
        if deterministic and not changed
        else []
    )
    if problems or nondeterministic:
        comparison = Comparison(
            fn_name,
            op_name,
            reference,
            inputs,
            fn_out,
            ref.out64,
            rules,
            output_problems,
            grad_problems,
            grad_names,
            nan_fill,
        )
        causes = likely_causes(fn, op, comparison) if problems else []
        if nondeterministic:
            causes.append(NONDETERMINISM_CAUSE)
        raise AssertionError(_failure_report(header, problems + nondeterministic, causes))
    skipped = tuple(
        name
        for name, flows, r in zip(_output_names(len(fn_out)), through, ref.out64, strict=True)
        if compared and not flows and r.is_floating_point()
    )
    return Compared(compared, skipped, tuple(notes))


# ---------------------------------------------------------------- the steps, in the order they run


def primary_dtype(inputs: dict[str, Any]) -> torch.dtype:
    """The dtype that picks the tolerance: that of the first floating tensor argument
    (u, x or ys for the scan operators)."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    raise ValueError("inputs hold no floating-point tensor")


def _gradient_inputs(inputs: dict[str, Any], check_grad: bool | None) -> list[str]:
    """The inputs whose gradients are compared (see `assert_matches_reference`'s `check_grad`)."""
    if check_grad is False:
        return []
    floating = [
        k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]
    grad_names = [k for k in floating if inputs[k].requires_grad]
    if check_grad and not grad_names:
        return floating
    return grad_names


def _report_header(fn_name: str, op_name: str, inputs: dict[str, Any]) -> str:
    """The first lines of every failure: what was compared, on which inputs, and how to rebuild
    them when they come from a case."""
    header = (
        f"{fn_name} does not match the reference {op_name}\n  inputs: {describe_inputs(inputs)}"
    )
    if isinstance(inputs, KernelInputs):
        header += f"\n  rebuild with: {inputs!r}"
    return header


@dataclass
class _ReferenceRuns:
    """The reference on the inputs upcast to float64, and on the inputs as given."""

    inputs64: dict[str, Any]
    out64: tuple[torch.Tensor, ...]
    native_inputs: dict[str, Any]
    native_out: tuple[torch.Tensor, ...]  # in the inputs' dtypes; `out64` for float64 inputs


def _run_reference(
    reference: Callable[..., Any],
    inputs: dict[str, Any],
    grad_names: Sequence[str],
    dtype: torch.dtype,
) -> _ReferenceRuns:
    """Run the reference in float64 and in the inputs' own dtypes. Only the low-precision run
    keeps its graph: its gradients set the low-precision rule's baseline."""
    inputs64 = fresh_copies(inputs, grad_names, torch.float64)
    out64 = as_tuple(reference(**inputs64))
    if dtype == torch.float64:
        return _ReferenceRuns(inputs64, out64, inputs64, out64)
    low = dtype in LOW_PRECISION
    native_inputs = fresh_copies(inputs, grad_names if low else [])
    with torch.set_grad_enabled(low and bool(grad_names)):
        native_out = as_tuple(reference(**native_inputs))
    return _ReferenceRuns(inputs64, out64, native_inputs, native_out)


def _run_fn(
    fn: Callable[..., Any],
    fn_inputs: dict[str, Any],
    header: str,
    fn_name: str,
    grad_names: Sequence[str],
    nan_fill: bool,
) -> tuple[Any, ...]:
    """`fn`'s outputs; an exception it raises becomes the failure, with a hint when it is about
    autograd."""
    try:
        with nan_filled_empty() if nan_fill else nullcontext():
            return as_tuple(fn(**fn_inputs))
    except Exception as err:
        autograd = grad_names and "grad" in str(err)
        hint = " (pass check_grad=False if fn does not support autograd)" if autograd else ""
        raise AssertionError(
            f"{header}\n{fn_name} raised {type(err).__name__}: {err}{hint}"
        ) from err


def _output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output[{i}]" for i in range(n)]


def _structure_problems(
    fn_out: tuple[Any, ...], native_out: tuple[Any, ...], input_dtype: torch.dtype
) -> tuple[list[str], list[str]]:
    """Output count, type, shape and dtype checks, and notes. Values cannot be compared if these
    fail. An output in the inputs' dtype where the reference returns its compute dtype (float16
    where the reference gives float32) is allowed, with a note."""
    if len(fn_out) != len(native_out):
        return [f"fn returned {len(fn_out)} output(s), the reference {len(native_out)}"], []
    problems, notes = [], []
    for name, f, r in zip(_output_names(len(native_out)), fn_out, native_out, strict=True):
        if not isinstance(f, torch.Tensor):
            problems.append(f"{name}: fn returned {type(f).__name__}, the reference a tensor")
            continue
        if tuple(f.shape) != tuple(r.shape):
            problems.append(
                f"{name}: shape mismatch, fn {tuple(f.shape)}, reference {tuple(r.shape)}"
            )
        if f.dtype != r.dtype and f.dtype == input_dtype and f.is_floating_point():
            notes.append(
                f"{name}: dtype {_dtype_name(f.dtype)}, the inputs' dtype, where the reference "
                f"returns its compute dtype {_dtype_name(r.dtype)}: compared in float32 or wider, "
                f"the low-precision baseline rounded to {_dtype_name(f.dtype)}"
            )
        elif f.dtype != r.dtype:
            problems.append(f"{name}: dtype mismatch, fn {f.dtype}, reference {r.dtype}")
    return problems, notes


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _output_rules(
    tol: Tolerance, ref: _ReferenceRuns, low: bool, fn_out: Sequence[torch.Tensor]
) -> list[Rule]:
    """One rule per output: elementwise, or the low-precision bound from the reference's own
    low-precision error on that output, rounded to fn's output dtype when that is narrower."""
    return [
        low_precision_rule(tol, _rounded_like(n, f), r) if low else Rule(tol)
        for n, r, f in zip(ref.native_out, ref.out64, fn_out, strict=True)
    ]


def _rounded_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` rounded through `like`'s dtype when that is a narrower floating dtype, else `t`."""
    narrower = (
        like.dtype != t.dtype
        and like.is_floating_point()
        and t.is_floating_point()
        and torch.finfo(like.dtype).eps > torch.finfo(t.dtype).eps
    )
    return t.detach().to(like.dtype).to(t.dtype) if narrower else t


def _output_problems(
    fn_out: Sequence[torch.Tensor], out64: Sequence[torch.Tensor], rules: Sequence[Rule]
) -> list[str]:
    """A mismatch report for each output that breaks its rule."""
    names = _output_names(len(out64))
    return [
        p
        for name, f, r, rule in zip(names, fn_out, out64, rules, strict=True)
        if (p := mismatch_report(name, f, r, rule)) is not None
    ]


def _has_gradients(
    fn_out: Sequence[torch.Tensor], header: str, fn_name: str, check_grad: bool | None
) -> bool:
    """Whether gradients can be compared: some output of `fn` requires grad. When none does,
    check_grad=None skips the gradients and check_grad=True fails."""
    if any(o.requires_grad for o in fn_out):
        return True
    if check_grad:
        raise AssertionError(
            f"{header}\n{fn_name}'s output does not require grad although its inputs "
            "do: fn does not support autograd (pass check_grad=False to test the "
            "forward pass only)"
        )
    return False


@dataclass
class _Backward:
    """How gradients are taken on both sides: the same cotangents, through the same outputs."""

    grad_names: Sequence[str]
    cotangents: Sequence[torch.Tensor]
    through: Sequence[bool]  # per output: whether fn's output requires grad
    nan_fill: bool = True

    def run(
        self, outputs: Sequence[torch.Tensor], leaves: dict[str, Any], failure_prefix: str
    ) -> list[torch.Tensor | None]:
        """fn's gradients; an exception its backward raises becomes the failure."""
        try:
            with nan_filled_empty() if self.nan_fill else nullcontext():
                return self.grads(outputs, leaves)
        except Exception as err:
            raise AssertionError(f"{failure_prefix} raised {type(err).__name__}: {err}") from err

    def grads(
        self,
        outputs: Sequence[torch.Tensor],
        leaves: dict[str, Any],
        dtype: torch.dtype | None = None,
    ) -> list[torch.Tensor | None]:
        """Gradients of `leaves[grad_names]` through the outputs fn backpropagates through, the
        cotangents cast to each output (or to `dtype`)."""
        pairs = [
            (o, c.to(device=o.device, dtype=dtype or o.dtype))
            for o, c, flows in zip(outputs, self.cotangents, self.through, strict=True)
            if flows and o.requires_grad
        ]
        return list(
            torch.autograd.grad(
                [o for o, _ in pairs],
                [leaves[k] for k in self.grad_names],
                [c for _, c in pairs],
                allow_unused=True,
            )
        )


def _gradient_problems(
    fn_grads: Sequence[torch.Tensor | None],
    ref: _ReferenceRuns,
    inputs: dict[str, Any],
    backward: _Backward,
    tol: Tolerance,
    *,
    low: bool,
) -> dict[str, str]:
    """Backpropagate the same cotangents through the reference, through the outputs fn
    backpropagates through; a report for each input whose gradient differs."""
    ref_grads = backward.grads(ref.out64, ref.inputs64, torch.float64)
    low_grads = backward.grads(ref.native_out, ref.native_inputs) if low else ref_grads
    problems: dict[str, str] = {}
    names = backward.grad_names
    for k, g_fn, g_ref, g_low in zip(names, fn_grads, ref_grads, low_grads, strict=True):
        problem = _grad_problem(k, inputs[k], g_fn, g_ref, g_low, tol, low)
        if problem is not None:
            problems[k] = problem
    return problems


def _cotangents(
    ref: _ReferenceRuns, seed: int, fn_out: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """A seeded random cotangent per output, in [-1, 1), rounded to the output's dtype (and to
    fn's, when narrower): the same values for both sides."""
    gen = torch.Generator().manual_seed(seed)
    return [
        _rounded_like(
            torch.rand(r.shape, generator=gen, dtype=torch.float64)
            .mul(2)
            .sub(1)
            .to(device=r.device, dtype=n.dtype),
            f,
        )
        for r, n, f in zip(ref.out64, ref.native_out, fn_out, strict=True)
    ]


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
        if bool((as_float64(g_ref) != 0).any()):
            return f"{label}: fn gives none (it does not flow back to `{name}`), the reference does"
        return None
    rule = low_precision_rule(tol, zeros if g_low is None else g_low, g_ref) if low else Rule(tol)
    return mismatch_report(label, g_fn, g_ref, rule)


NONDETERMINISM_CAUSE = (
    "fn is not deterministic: two calls on the same inputs give different bits, the mark of "
    "an order-dependent reduction (atomic adds, or a reduction order that varies between calls)"
)


def _nondeterminism(
    fn: Callable[..., Any],
    inputs: dict[str, Any],
    fn_out: Sequence[torch.Tensor],
    fn_grads: Sequence[torch.Tensor | None],
    backward: _Backward,
    header: str,
    fn_name: str,
    compared: bool,
) -> list[str]:
    """Run fn (and its backward) again on fresh copies of the same inputs; a report for each
    output and gradient that is not bit-identical to the first run's."""
    again_inputs = fresh_copies(inputs, backward.grad_names if compared else [])
    again = _run_fn(fn, again_inputs, header, fn_name, backward.grad_names, backward.nan_fill)
    names = _output_names(len(fn_out))
    pairs = list(zip(names, fn_out, again, strict=True))
    if compared:
        grads = backward.run(again, again_inputs, f"{header}\n{fn_name}'s second backward")
        labels = [f"gradient of `{k}`" for k in backward.grad_names]
        pairs += [
            (label, a, b)
            for label, a, b in zip(labels, fn_grads, grads, strict=True)
            if a is not None and b is not None
        ]
    problems = []
    for name, first, second in pairs:
        a, b = first.detach(), second.detach()
        differ = (a != b) & ~(a.isnan() & b.isnan())
        if bool(differ.any()):
            largest = float((as_float64(a) - as_float64(b)).abs()[differ.cpu()].max())
            problems.append(
                f"{name}: not deterministic, two calls on the same inputs differ in "
                f"{int(differ.sum())} of {differ.numel()} elements (largest difference "
                f"{largest:.3e})"
            )
    return problems


def _modified_inputs(before: dict[str, torch.Tensor], fn_inputs: dict[str, Any]) -> list[str]:
    """The inputs whose values `fn` changed (NaN where it was NaN counts as unchanged)."""
    return [
        k
        for k, v in before.items()
        if not bool(
            ((fn_inputs[k].detach() == v) | (fn_inputs[k].detach().isnan() & v.isnan())).all()
        )
    ]


def _failure_report(header: str, problems: Sequence[str], causes: Sequence[str]) -> str:
    """The AssertionError message: the header, every problem, then the likely causes."""
    text = header + "\n" + "\n".join(problems)
    if causes:
        text += "\nlikely cause:\n" + "\n".join(f"  - {c}" for c in causes)
    return text
