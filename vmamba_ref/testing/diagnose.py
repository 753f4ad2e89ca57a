"""Name the likely cause of a mismatch, so that a failed check reads as a bug report.

When `fn` disagrees with the reference, this module tests a few hypotheses about what went
wrong, each by recomputing something and comparing it with what `fn` returned:

- the reference with one common bug planted (D dropped, delta_bias dropped or added twice,
  softplus skipped or applied twice, initial_state ignored, B and C swapped): if `fn` matches
  that, it has that bug;
- for cross-scan, which reference route each route of `fn` equals (a wrong route order, or a
  route that matches none, such as an off-by-one in a reversed route); for cross-merge, whether
  `fn` merges the routes in another order or leaves one out;
- `fn` run again on contiguous copies of the inputs: if that matches, `fn` mishandles strides;
- NaN where the reference is finite (inputs finite, NaN of the fill's sign): an output element
  that was never written; NaN or inf where the reference overflows fn's dtype: an overflow;
- a correct forward pass with some gradients wrong: the backward of those inputs.

Each finding is one sentence; the list is empty when nothing fits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vmamba_ref.testing.mismatch import mismatch_report
from vmamba_ref.testing.nan_buffers import nan_filled_empty
from vmamba_ref.testing.runs import REFERENCE_OPS, Comparison, as_tuple, fresh_copies


def likely_causes(fn: Callable[..., Any], op: str | Callable[..., Any], c: Comparison) -> list[str]:
    """Sentences naming the probable bug behind the mismatch recorded in `c`."""
    causes: list[str] = []
    if c.output_problems:
        causes += _strides(fn, c)
        if isinstance(op, str):
            causes += _VARIANTS[op](c)
        causes += _partial_outputs(c)
    elif c.grad_problems:
        bad = [k for k in c.grad_names if k in c.grad_problems]
        good = [k for k in c.grad_names if k not in c.grad_problems]
        text = f"the forward pass matches; the backward is wrong for {_names(bad)}"
        if good:
            text += f" (the gradients of {_names(good)} match)"
        causes.append(text)
    causes += unwritten_or_overflow(c.fn_out, c.ref_out, c.inputs, c.nan_fill)
    return causes


def unwritten_or_overflow(
    fn_out: Sequence[torch.Tensor],
    ref_out: Sequence[torch.Tensor],
    inputs: dict[str, Any],
    nan_fill: bool,
) -> list[str]:
    """Tell an unwritten output element from an overflow, for NaN or inf that fn returned.

    An unwritten element: the reference is finite and representable in fn's dtype there, every
    input is finite, and fn's NaN has the bits of the fill (a positive quiet NaN; x86 makes
    negative NaN from inf - inf and 0 * inf). An overflow: the reference itself is infinite, or
    too large for fn's dtype, where fn is not finite.
    """
    inputs_finite = all(
        bool(v.detach().isfinite().all())
        for v in inputs.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )
    causes = []
    for f, r in zip(fn_out, ref_out, strict=True):
        f, r = f.detach().cpu(), r.detach().cpu().to(torch.float64)
        if not f.is_floating_point() or f.shape != r.shape:
            continue
        largest = torch.finfo(f.dtype).max
        out_of_range = ~r.isfinite() | (r.abs() > largest)
        overflow = ~f.isfinite() & out_of_range
        if bool(overflow.any()):
            finite_ref = r[r.isfinite()]
            top = float(finite_ref.abs().max()) if finite_ref.numel() else float("inf")
            causes.append(
                f"fn returned NaN/inf where the reference is infinite or beyond {f.dtype}'s "
                f"range (largest finite |reference| {top:.3e}): an overflow, not an unwritten "
                "element"
            )
        unwritten = f.isnan() & ~out_of_range & ~torch.signbit(f)
        if inputs_finite and bool(unwritten.any()):
            causes.append(
                "fn returned NaN where the reference is finite: an output element was probably "
                "never written"
                + (
                    " (fresh torch.empty/numpy.empty buffers are NaN-filled while fn runs)"
                    if nan_fill
                    else ""
                )
                + ", or fn read memory outside its inputs"
            )
    return list(dict.fromkeys(causes))


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _float64(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.detach().to(torch.float64)
        if isinstance(v, torch.Tensor) and v.is_floating_point()
        else v
        for k, v in inputs.items()
    }


def _matches(c: Comparison, output: torch.Tensor, index: int = 0) -> bool:
    return mismatch_report("", c.fn_out[index], output, c.output_rules[index]) is None


def _strides(fn: Callable[..., Any], c: Comparison) -> list[str]:
    strided = [
        k for k, v in c.inputs.items() if isinstance(v, torch.Tensor) and not v.is_contiguous()
    ]
    if not strided:
        return []
    dense = {
        k: v.detach().contiguous() if isinstance(v, torch.Tensor) else v
        for k, v in c.inputs.items()
    }
    try:
        with torch.no_grad(), nan_filled_empty():
            out = as_tuple(fn(**fresh_copies(dense, [])))
        right = all(
            mismatch_report("", o, r, rule) is None
            for o, r, rule in zip(out, c.ref_out, c.output_rules, strict=True)
        )
    except Exception:
        return []
    if not right:
        return []
    return [
        f"fn is right on contiguous copies of the same inputs: it mishandles the strides of "
        f"the non-contiguous input(s) {_names(strided)}"
    ]


def _partial_outputs(c: Comparison) -> list[str]:
    if len(c.fn_out) < 2:
        return []
    good = [i for i in range(len(c.fn_out)) if _matches(c, c.ref_out[i], i)]
    bad = [i for i in range(len(c.fn_out)) if i not in good]
    if not good:
        return []
    return [f"output(s) {good} match the reference, output(s) {bad} do not"]


def _scan_variants(c: Comparison, grid: bool) -> list[str]:
    """Plant one bug at a time in the reference selective scan or SS2D core."""
    args = _float64(c.inputs)
    reference = REFERENCE_OPS["ss2d_core" if grid else "selective_scan"]
    variants: list[tuple[str, dict[str, Any]]] = []
    D, bias, softplus = args.get("D"), args.get("delta_bias"), args.get("delta_softplus", True)
    if D is not None:
        variants.append(
            ("the skip term D * u is missing (fn matches the reference without D)", {"D": None})
        )
    if bias is not None:
        variants.append(
            (
                "delta_bias is not added to the step size (fn matches the reference without it)",
                {"delta_bias": None},
            )
        )
        variants.append(
            (
                "delta_bias is added twice (fn matches the reference given 2 * delta_bias)",
                {"delta_bias": 2 * bias},
            )
        )
    if softplus:
        variants.append(
            (
                "softplus is not applied to the step size (fn matches the reference with "
                "delta_softplus=False)",
                {"delta_softplus": False},
            )
        )
        delta = args["delta"]  # (b, k*d, l) or (b, k, d, h, w)
        if bias is not None:
            delta = delta + (bias.view(1, 4, -1, 1, 1) if grid else bias[:, None])  # per channel
        variants.append(
            (
                "softplus is applied twice to the step size (fn matches the reference given "
                "softplus(delta + delta_bias) as delta)",
                {"delta": F.softplus(delta), "delta_bias": None},
            )
        )
    else:
        variants.append(
            (
                "softplus is applied although delta_softplus=False (fn matches the reference with "
                "delta_softplus=True)",
                {"delta_softplus": True},
            )
        )
    if args.get("initial_state") is not None:
        variants.append(
            (
                "initial_state is ignored (fn matches the reference started from zeros)",
                {"initial_state": None},
            )
        )
    variants.append(
        (
            "B and C are swapped (fn matches the reference with B and C exchanged)",
            {"B": args["C"], "C": args["B"]},
        )
    )
    found = []
    for sentence, change in variants:
        try:
            out = as_tuple(reference(**{**args, **change}))
        except Exception:
            continue
        if _matches(c, out[0]):
            found.append(sentence)
    return found


def _cross_scan_routes(c: Comparison) -> list[str]:
    fast, ref = c.fn_out[0], c.ref_out[0]  # (b, k, d, l)
    if fast.dim() != 4 or fast.shape[1] != 4:
        return []
    rule = c.output_rules[0]
    same = [
        [j for j in range(4) if mismatch_report("", fast[:, k], ref[:, j], rule) is None]
        for k in range(4)
    ]
    wrong = [k for k in range(4) if k not in same[k]]
    if not wrong:
        return []
    if all(same):
        pairs = "; ".join(
            f"fn route {k} = reference route {' or '.join(map(str, same[k]))}" for k in wrong
        )
        return [f"wrong route order: every route of fn is a reference route, but {pairs}"]
    lost = [k for k in range(4) if not same[k]]
    right = [k for k in range(4) if k in same[k]]
    text = f"route(s) {lost} of fn match no reference route"
    if right:
        text += f" (route(s) {right} are right)"
    if any(k >= 2 for k in lost):
        text += "; routes 2 and 3 are routes 0 and 1 read backwards, check the reversed index"
    return [text]


def _cross_merge_routes(c: Comparison) -> list[str]:
    ys = _float64(c.inputs)["ys"]  # (b, k, d, h, w)
    if ys.dim() != 5 or ys.shape[1] != 4:
        return []
    merge = REFERENCE_OPS["cross_merge"]
    for perm in itertools.permutations(range(4)):
        if list(perm) != [0, 1, 2, 3] and _matches(c, merge(ys[:, list(perm)])):
            return [
                f"wrong route order: fn merges its input routes {list(perm)} as routes 0, 1, 2, 3"
            ]
    for k in range(4):
        dropped = ys.clone()
        dropped[:, k] = 0
        if _matches(c, merge(dropped)):
            return [
                f"route {k} is missing from the merge (fn matches the merge of the other three)"
            ]
    return []


_VARIANTS: dict[str, Callable[[Comparison], list[str]]] = {
    "cross_scan": _cross_scan_routes,
    "cross_merge": _cross_merge_routes,
    "selective_scan": lambda c: _scan_variants(c, grid=False),
    "ss2d_core": lambda c: _scan_variants(c, grid=True),
}
