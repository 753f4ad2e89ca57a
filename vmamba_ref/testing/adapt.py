"""Test a third-party kernel as it is: call it through its own signature, on the cases it can run.

A kernel written for mamba_ssm has the signature
`selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False)`: no `initial_state`, another default for `delta_softplus`, and maybe
positional-only parameters in a compiled binding. Its grouped B, C (b, g, n, l) are our
(b, k, n, l), so only the call differs. `adapt(fn, op)` reads `fn`'s signature
(`inspect.signature`) and builds the call:

- the reference's required arguments (u, delta, A, B, C) go positionally, in the reference's
  order, so positional-only kernels work;
- each optional argument goes by keyword when `fn` has a parameter of that name (or `**kwargs`),
  always, even at its default: `delta_softplus` is passed explicitly because mamba_ssm's default
  (False) is not ours (True);
- an optional argument `fn` lacks is dropped when it is None or False (absent, or off), and
  otherwise makes the case one `fn` cannot express: `check_kernel` skips such a case and says so.

`Capabilities` states what the kernel supports (state sizes, dtypes, initial state, last state,
gradients); `capabilities_from_signature` infers what a signature shows. The default strategy
then draws only cases the kernel supports, and a kernel with `gradients=False` is compared on
its outputs only.

Official implementation: mamba_ssm's `selective_scan_interface.selective_scan_fn`, whose
signature `vmamba_fast.compat.selective_scan_fn` copies.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vmamba_ref.testing.runs import reference_for

# The optional arguments that name a feature, for the report of what was skipped.
FEATURES = {
    "initial_state": "initial state (fn has no `initial_state` parameter)",
    "return_last_state": "last state (fn has no `return_last_state` parameter)",
    "z": "gate z (fn has no `z` parameter)",
}
_LAYOUT_OF_DIM = {4: "grouped", 3: "variable", 2: "constant"}  # B, C by their number of dims


@dataclass(frozen=True)
class Capabilities:
    """What a kernel supports; `check_kernel` tests it only on such cases.

    None means "not stated": inferred from the signature (`initial_state`, `last_state`),
    detected per call (`gradients`: compared when fn's output carries a grad_fn), or unbounded.
    """

    state_sizes: tuple[int, int] | None = None  # (smallest, largest) n the kernel accepts
    dtypes: tuple[torch.dtype, ...] | None = None  # input dtypes the kernel accepts
    initial_state: bool | None = None  # accepts `initial_state` (b, k*d, n)
    last_state: bool | None = None  # accepts `return_last_state=True`
    gradients: bool | None = None  # supports autograd; False: compare outputs only
    layouts: tuple[str, ...] | None = None  # B/C layouts it takes; None: "grouped" only
    gate: bool | None = None  # takes the gate `z` (b, k*d, l); None: read from the signature

    def __post_init__(self) -> None:
        if self.state_sizes is not None:
            low, high = self.state_sizes
            if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
                raise ValueError(
                    f"Capabilities.state_sizes must be (smallest, largest) ints with "
                    f"1 <= smallest <= largest, got {self.state_sizes!r}"
                )
        if self.dtypes is not None and not self.dtypes:
            raise ValueError("Capabilities.dtypes must name at least one dtype, or be None")
        if self.layouts is not None and (
            not self.layouts or any(x not in _LAYOUT_OF_DIM.values() for x in self.layouts)
        ):
            raise ValueError(
                f"Capabilities.layouts must name some of {list(_LAYOUT_OF_DIM.values())}, "
                f"got {self.layouts!r}"
            )


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Names `fn` accepts by keyword, and whether it has `**kwargs`."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume it takes everything
        return set(), True
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    names, var_keyword = _parameters(fn)
    return var_keyword or name in names


def capabilities_from_signature(
    fn: Callable[..., Any], op: str | Callable[..., Any], given: Capabilities | None = None
) -> Capabilities:
    """`given` with its unstated `initial_state` and `last_state` read from `fn`'s signature
    (only where the reference `op` has those arguments)."""
    given = given or Capabilities()
    _, reference = reference_for(op)
    ref_names, _ = _parameters(reference)

    def infer(stated: bool | None, name: str) -> bool | None:
        if stated is not None or name not in ref_names:
            return stated
        return _accepts(fn, name)

    return Capabilities(
        state_sizes=given.state_sizes,
        dtypes=given.dtypes,
        initial_state=infer(given.initial_state, "initial_state"),
        last_state=infer(given.last_state, "return_last_state"),
        gradients=given.gradients,
        layouts=given.layouts,
        gate=infer(given.gate, "z"),
    )


def _required(reference: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(reference).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def unsupported(
    fn: Callable[..., Any],
    op: str | Callable[..., Any],
    inputs: dict[str, Any],
    capabilities: Capabilities | None = None,
) -> list[str]:
    """Why `fn` cannot run the case `inputs` (empty when it can): an optional argument it lacks
    set to something other than None or False, or a size or dtype outside `capabilities`."""
    _, reference = reference_for(op)
    required = set(_required(reference))
    reasons = [
        FEATURES.get(k, f"`{k}`={v!r} (fn has no `{k}` parameter)")
        for k, v in inputs.items()
        if k not in required and v is not None and v is not False and not _accepts(fn, k)
    ]
    caps = capabilities or Capabilities()
    if caps.initial_state is False and inputs.get("initial_state") is not None:
        reasons.append("initial state (Capabilities.initial_state=False)")
    if caps.last_state is False and inputs.get("return_last_state"):
        reasons.append("last state (Capabilities.last_state=False)")
    if caps.gate is False and inputs.get("z") is not None:
        reasons.append("gate z (Capabilities.gate=False)")
    for name in ("B", "C"):
        value = inputs.get(name)
        layout = _LAYOUT_OF_DIM.get(value.dim()) if isinstance(value, torch.Tensor) else None
        if layout is not None and layout not in (caps.layouts or ("grouped",)):
            reasons.append(f"{name} in the {layout!r} layout (Capabilities.layouts={caps.layouts})")
    A = inputs.get("A")
    if caps.state_sizes is not None and isinstance(A, torch.Tensor) and A.dim() == 2:
        low, high = caps.state_sizes
        if not low <= A.shape[1] <= high:
            reasons.append(
                f"state size n={A.shape[1]} (Capabilities.state_sizes={caps.state_sizes})"
            )
    if caps.dtypes is not None:
        dtype = next(
            (
                v.dtype
                for v in inputs.values()
                if isinstance(v, torch.Tensor) and v.is_floating_point()
            ),
            None,
        )
        if dtype is not None and dtype not in caps.dtypes:
            reasons.append(f"dtype {dtype} (Capabilities.dtypes={caps.dtypes})")
    return list(dict.fromkeys(reasons))


def adapt(fn: Callable[..., Any], op: str | Callable[..., Any]) -> Callable[..., Any]:
    """`fn` called through its own signature: a function of the reference's keyword arguments
    that passes the required ones positionally and only the optional ones `fn` accepts.

        assert_matches_reference(adapt(selective_scan_fn, "selective_scan"), inputs, op=...)

    Optional arguments `fn` lacks are dropped; check `unsupported(fn, op, inputs)` first, as
    `check_kernel` does, for the cases where dropping one changes the result.
    """
    _, reference = reference_for(op)
    required = _required(reference)

    def adapted(**inputs: Any) -> Any:
        args = [inputs[k] for k in required]
        kwargs = {k: v for k, v in inputs.items() if k not in required and _accepts(fn, k)}
        return fn(*args, **kwargs)

    adapted.__name__ = adapted.__qualname__ = getattr(fn, "__name__", type(fn).__name__)
    adapted.__wrapped__ = fn  # type: ignore[attr-defined]
    return adapted
