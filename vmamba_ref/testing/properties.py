"""Property tests of a user's kernel against the reference: `check_selective_scan(my_scan)`.

Each `check_*` function runs a Hypothesis property test: draw inputs from `strategies.py`, run
`assert_matches_reference` on them, and on a failure let Hypothesis shrink the inputs to a
minimal counterexample. It raises `KernelMismatchError` (an AssertionError) carrying that
counterexample, as a call that rebuilds it, the mismatch report with its likely cause, and how
many examples Hypothesis needed to find the failure. It returns a `CheckReport` when every
example passes.

    from vmamba_ref.testing import check_selective_scan
    check_selective_scan(my_scan)                       # forward, and gradients if it has them
    check_selective_scan(my_scan, deterministic=True)   # and bit-identical on a second call

`make_test(my_scan, op="selective_scan")` wraps the same check as a pytest test function.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis
import torch
from hypothesis import HealthCheck
from hypothesis import strategies as st

import vmamba_ref.testing.profiles  # noqa: F401  (importing it registers the settings profiles)
from vmamba_ref.testing.adapt import Capabilities, adapt, capabilities_from_signature, unsupported
from vmamba_ref.testing.cases import cast_inputs
from vmamba_ref.testing.compare import compare_with_reference, primary_dtype
from vmamba_ref.testing.runs import reference_for
from vmamba_ref.testing.strategies import DEFAULT_DTYPES, STRATEGIES
from vmamba_ref.testing.tolerances import ToleranceOverride, loosened

logger = logging.getLogger(__name__)


class KernelMismatchError(AssertionError):
    """A kernel disagrees with the reference. The message holds the shrunk counterexample and the
    mismatch report; the attributes hold the same for programs."""

    def __init__(
        self,
        message: str,
        *,
        op: str,
        counterexample: str,
        report: str,
        examples_to_failure: int,
    ) -> None:
        super().__init__(message)
        self.op = op
        self.counterexample = counterexample  # the call that rebuilds the inputs
        self.report = report  # assert_matches_reference's message
        self.examples_to_failure = examples_to_failure  # examples run up to the first failure


@dataclass(frozen=True)
class CheckReport:
    """What a passing check ran, and what it did not."""

    op: str
    examples: int  # examples compared
    gradient_examples: int  # of which the gradients were compared too
    skipped_examples: int = 0  # drawn examples fn cannot run (see `skipped`)
    skipped: tuple[str, ...] = ()  # features not tested, each with the reason
    warnings: tuple[str, ...] = ()  # e.g. a loosened tolerance
    notes: tuple[str, ...] = ()  # e.g. an output dtype other than the reference's

    def __str__(self) -> str:
        lines = [
            f"{self.op}: {self.examples} example(s) compared, {self.gradient_examples} with "
            f"gradients, {self.skipped_examples} skipped"
        ]
        lines += [f"  not tested: {s}" for s in self.skipped]
        lines += [f"  {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def resolve_settings(
    profile: hypothesis.settings | str | None, max_examples: int | None
) -> hypothesis.settings:
    """The Hypothesis settings of a check: `profile` (a settings object, a profile name, or None
    for the active profile), with `max_examples` if given, `deadline=None` (kernels compile on
    their first call) and one bug reported at a time."""
    if profile is None:
        base = hypothesis.settings()
    elif isinstance(profile, str):
        base = hypothesis.settings.get_profile(profile)
    else:
        base = profile
    if max_examples is not None and (isinstance(max_examples, bool) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    return hypothesis.settings(
        base,
        max_examples=base.max_examples if max_examples is None else max_examples,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[*base.suppress_health_check, HealthCheck.too_slow],
    )


def check_kernel(
    fn: Callable[..., Any],
    op: str | Callable[..., Any],
    *,
    inputs: st.SearchStrategy[dict[str, Any]] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    check_grad: bool | None = None,
    max_examples: int | None = None,
    settings: hypothesis.settings | str | None = None,
    nan_fill: bool = True,
    capabilities: Capabilities | None = None,
    tolerance: ToleranceOverride | None = None,
    deterministic: bool = False,
) -> CheckReport:
    """Property-test `fn` against the reference `op` over many generated inputs.

    Args:
        fn: the implementation under test. It is called through its own signature
            (`adapt.adapt`): required tensors positionally, the optional arguments it has by
            keyword; cases needing one it lacks are skipped and listed in the report.
        op: "cross_scan", "cross_merge", "selective_scan", "ss2d_core", or a reference callable
            (then `inputs` is required).
        inputs: a strategy of keyword-argument dicts; default: the op's strategy from
            `strategies.py` with `dtypes` and `requires_grad` set.
        dtypes: dtypes of the default strategy (float32 and float64 if None); with `inputs`,
            each drawn example is cast to each of these dtypes.
        check_grad: None: compare gradients whenever fn's output carries a grad_fn; True:
            require it; False: forward only, inputs do not require grad.
        max_examples: examples to run (default: the profile's).
        settings: a Hypothesis settings object or profile name ("dev", "ci", "thorough");
            default: the active profile.
        nan_fill: NaN-fill `empty` buffers while fn runs, so unwritten elements fail.
        capabilities: what fn supports (`adapt.Capabilities`); unstated fields are read from
            its signature. `gradients=False` compares outputs only.
        tolerance: a Tolerance (or a dict of one per dtype) looser than the table's; it warns
            and the report says so. A tighter one raises ValueError.
        deterministic: also call fn (and its backward) a second time on every example and
            require bit-identical outputs and gradients (an order-dependent reduction fails).

    Returns:
        A CheckReport: examples compared and skipped, how many had their gradients compared,
        the features not tested and why (an output fn returns without grad is not
        backpropagated through), warnings, and notes (an output in the inputs' dtype where the
        reference returns float32).

    Raises:
        KernelMismatchError: with the shrunk counterexample and the mismatch report.
        ValueError: for options that contradict each other or a tolerance tighter than the table.
    """
    op_name, _ = reference_for(op)
    caps = capabilities_from_signature(fn, op, capabilities)
    if caps.gradients is False:
        if check_grad:
            raise ValueError(
                "check_kernel: check_grad=True contradicts Capabilities(gradients=False)"
            )
        check_grad = False
    pinned: list[str] = []
    if inputs is None:
        if not isinstance(op, str):
            raise ValueError(
                f"check_kernel: pass `inputs` (a strategy) for the custom reference {op_name}"
            )
        inputs, pinned = _default_strategy(op, caps, dtypes, check_grad)
        checked_dtypes = _supported_dtypes(caps, dtypes)
    else:
        checked_dtypes = tuple(dtypes) if dtypes is not None else ()
        if dtypes is not None:
            inputs = st.tuples(inputs, st.sampled_from(checked_dtypes)).map(
                lambda pair: cast_inputs(*pair)
            )
    notes: dict[str, None] = {}
    remarks: dict[str, None] = {}

    def note_tolerance(dtype: torch.dtype) -> None:
        warning = loosened(tolerance, dtype)[1]  # raises ValueError when tighter than the table
        if warning is not None and warning not in notes:
            notes[warning] = None
            warnings.warn(warning, stacklevel=4)

    for dtype in checked_dtypes:
        note_tolerance(dtype)
    call = adapt(fn, op)
    skipped: dict[str, None] = dict.fromkeys(pinned)
    fn_name = getattr(fn, "__name__", type(fn).__name__)
    progress = {"examples": 0, "gradients": 0, "first_failure": 0, "skipped": 0}

    def property_test(case: dict[str, Any]) -> None:
        reasons = unsupported(fn, op, case, caps)
        if reasons:
            progress["skipped"] += 1
            skipped.update(dict.fromkeys(reasons))
            return
        progress["examples"] += 1
        note_tolerance(primary_dtype(case))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the loosened tolerance warned once above
                compared = compare_with_reference(
                    call,
                    case,
                    op=op,
                    check_grad=check_grad,
                    nan_fill=nan_fill,
                    tolerance=tolerance,
                    deterministic=deterministic,
                )
            if compared.gradients:
                progress["gradients"] += 1
            for name in compared.not_backpropagated:
                skipped[
                    f"gradients through {name}: fn returns it without grad, so the kit does not "
                    "backpropagate through it"
                ] = None
            remarks.update(dict.fromkeys(compared.notes))
        except AssertionError as err:
            progress["first_failure"] = progress["first_failure"] or progress["examples"]
            found = progress["first_failure"]
            raise KernelMismatchError(
                f"check_{op_name}: {fn_name} disagrees with the reference. Hypothesis found a "
                f"failing example after {found} example(s); the shrunk counterexample:\n{err}",
                op=op_name,
                counterexample=repr(case),
                report=str(err),
                examples_to_failure=found,
            ) from err

    property_test.__name__ = property_test.__qualname__ = f"check_{op_name}"
    test = hypothesis.given(case=inputs)(resolve_settings(settings, max_examples)(property_test))
    test()
    report = CheckReport(
        op_name,
        progress["examples"],
        progress["gradients"],
        progress["skipped"],
        tuple(skipped),
        tuple(notes),
        tuple(remarks),
    )
    logger.info("%s matches %s: %s", fn_name, op_name, report)
    return report


def _supported_dtypes(
    caps: Capabilities, dtypes: Sequence[torch.dtype] | None
) -> tuple[torch.dtype, ...]:
    """The dtypes the default strategy draws: `dtypes` (or the default), less those fn does not
    support."""
    wanted = tuple(DEFAULT_DTYPES if dtypes is None else dtypes)
    if caps.dtypes is None:
        return wanted
    supported = tuple(d for d in wanted if d in caps.dtypes)
    if not supported:
        raise ValueError(
            f"check_kernel: none of the dtypes {wanted} is in Capabilities.dtypes={caps.dtypes}"
        )
    return supported


def _default_strategy(
    op: str,
    caps: Capabilities,
    dtypes: Sequence[torch.dtype] | None,
    check_grad: bool | None,
) -> tuple[st.SearchStrategy[dict[str, Any]], list[str]]:
    """The op's strategy, drawing only what `caps` supports, and the features that leaves out."""
    options: dict[str, Any] = {
        "requires_grad": check_grad is not False,
        "dtypes": _supported_dtypes(caps, dtypes),
    }
    pinned = []
    if op == "selective_scan":
        if caps.initial_state is False:
            options["with_initial_state"] = False
            pinned.append("initial state: not supported (no `initial_state` parameter, or stated)")
        if caps.last_state is False:
            options["return_last_state"] = False
            pinned.append("last state: not supported (no `return_last_state` parameter, or stated)")
        if caps.layouts is not None:  # unstated: VMamba's grouped B and C only, as drawn before
            options["layouts"] = caps.layouts
        if caps.gate:
            options["with_z"] = None  # drawn: with and without the gate
    if op in ("selective_scan", "ss2d_core") and caps.state_sizes is not None:
        low, high = caps.state_sizes
        options["max_state"] = min(high, max(low, 4))  # n below `low` is skipped per example
    if caps.gradients is False:
        pinned.append("gradients: Capabilities(gradients=False), outputs compared only")
    return STRATEGIES[op](**options), pinned


def _check_op(op: str) -> Callable[..., CheckReport]:
    def check(
        fn: Callable[..., Any],
        *,
        inputs: st.SearchStrategy[dict[str, Any]] | None = None,
        dtypes: Sequence[torch.dtype] | None = None,
        check_grad: bool | None = None,
        max_examples: int | None = None,
        settings: hypothesis.settings | str | None = None,
        nan_fill: bool = True,
        capabilities: Capabilities | None = None,
        tolerance: ToleranceOverride | None = None,
        deterministic: bool = False,
    ) -> CheckReport:
        return check_kernel(
            fn,
            op,
            inputs=inputs,
            dtypes=dtypes,
            check_grad=check_grad,
            max_examples=max_examples,
            settings=settings,
            nan_fill=nan_fill,
            capabilities=capabilities,
            tolerance=tolerance,
            deterministic=deterministic,
        )

    check.__name__ = check.__qualname__ = f"check_{op}"
    check.__doc__ = (
        f"Property-test `fn` against the reference `{op}`: `check_kernel(fn, {op!r}, ...)`.\n\n"
        f"`fn` has the signature of `vmamba_ref.{op}`; the default inputs come from "
        f"`strategies.{op}_inputs`. Returns a CheckReport; raises KernelMismatchError with the "
        "shrunk counterexample. See `check_kernel` for the options."
    )
    return check


check_cross_scan = _check_op("cross_scan")
check_cross_merge = _check_op("cross_merge")
check_selective_scan = _check_op("selective_scan")
check_ss2d_core = _check_op("ss2d_core")


def make_test(
    fn: Callable[..., Any],
    op: str | Callable[..., Any],
    *,
    inputs: st.SearchStrategy[dict[str, Any]] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    check_grad: bool | None = None,
    max_examples: int | None = None,
    settings: hypothesis.settings | str | None = None,
    nan_fill: bool = True,
    capabilities: Capabilities | None = None,
    tolerance: ToleranceOverride | None = None,
    deterministic: bool = False,
) -> Callable[[Any], None]:
    """A pytest test function that runs `check_kernel(fn, op, ...)`.

        test_my_scan = make_test(my_scan, op="selective_scan")

    pytest collects it under the name it is assigned to. With the opt-in plugin
    (`-p vmamba_ref.testing.pytest_plugin`), `--vmamba-examples N` sets the number of examples
    unless `max_examples` is given here.
    """
    op_name, _ = reference_for(op)
    fn_name = getattr(fn, "__name__", type(fn).__name__)

    def test(request: Any) -> None:
        examples = max_examples
        if examples is None:
            examples = request.config.getoption("vmamba_examples", default=None)
        check_kernel(
            fn,
            op,
            inputs=inputs,
            dtypes=dtypes,
            check_grad=check_grad,
            max_examples=examples,
            settings=settings,
            nan_fill=nan_fill,
            capabilities=capabilities,
            tolerance=tolerance,
            deterministic=deterministic,
        )

    test.__name__ = test.__qualname__ = f"test_{fn_name}_matches_{op_name}"
    test.__doc__ = (
        f"{fn_name} matches the reference {op_name} (a vmamba_ref.testing property test)."
    )
    return test
