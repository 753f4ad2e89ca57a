"""Property tests of a user's kernel against the reference: `check_selective_scan(my_scan)`.

Each `check_*` function runs a Hypothesis property test: draw inputs from `strategies.py`, run
`assert_matches_reference` on them, and on a failure let Hypothesis shrink the inputs to a
minimal counterexample. It raises `KernelMismatchError` (an AssertionError) carrying that
counterexample, as a call that rebuilds it, the mismatch report with its likely cause, and how
many examples Hypothesis needed to find the failure. It returns a `CheckReport` when every
example passes.

    from vmamba_ref.testing import check_selective_scan
    check_selective_scan(my_scan)                       # forward, and gradients if it has them

`make_test(my_scan, op="selective_scan")` wraps the same check as a pytest test function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis
import torch
from hypothesis import HealthCheck
from hypothesis import strategies as st

import vmamba_ref.testing.profiles  # noqa: F401  (importing it registers the settings profiles)
from vmamba_ref.testing.compare import assert_matches_reference
from vmamba_ref.testing.runs import reference_for
from vmamba_ref.testing.strategies import STRATEGIES

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
    """What a passing check ran."""

    op: str
    examples: int  # examples run
    gradient_examples: int  # of which the gradients were compared too


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
) -> CheckReport:
    """Property-test `fn` against the reference `op` over many generated inputs.

    Args:
        fn: the implementation under test, with the reference's signature.
        op: "cross_scan", "cross_merge", "selective_scan", "ss2d_core", or a reference callable
            (then `inputs` is required).
        inputs: a strategy of keyword-argument dicts; default: the op's strategy from
            `strategies.py` with `dtypes` and `requires_grad` set.
        dtypes: dtypes of the default strategy (float32 and float64 if None).
        check_grad: None: compare gradients whenever fn's output carries a grad_fn; True:
            require it; False: forward only, inputs do not require grad.
        max_examples: examples to run (default: the profile's).
        settings: a Hypothesis settings object or profile name ("dev", "ci", "thorough");
            default: the active profile.
        nan_fill: NaN-fill `empty` buffers while fn runs, so unwritten elements fail.

    Returns:
        A CheckReport: examples run, and how many had their gradients compared.

    Raises:
        KernelMismatchError: with the shrunk counterexample and the mismatch report.
    """
    op_name, _ = reference_for(op)
    if inputs is None:
        if not isinstance(op, str):
            raise ValueError(
                f"check_kernel: pass `inputs` (a strategy) for the custom reference {op_name}"
            )
        options: dict[str, Any] = {"requires_grad": check_grad is not False}
        if dtypes is not None:
            options["dtypes"] = dtypes
        inputs = STRATEGIES[op](**options)
    elif dtypes is not None:
        raise ValueError(
            "check_kernel: `dtypes` sets the default strategy; pass it to your `inputs` strategy"
        )
    fn_name = getattr(fn, "__name__", type(fn).__name__)
    progress = {"examples": 0, "gradients": 0, "first_failure": 0}

    def property_test(case: dict[str, Any]) -> None:
        progress["examples"] += 1
        try:
            if assert_matches_reference(fn, case, op=op, check_grad=check_grad, nan_fill=nan_fill):
                progress["gradients"] += 1
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
    report = CheckReport(op_name, progress["examples"], progress["gradients"])
    logger.info("%s matches %s: %s", fn_name, op_name, report)
    return report


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
        )

    test.__name__ = test.__qualname__ = f"test_{fn_name}_matches_{op_name}"
    test.__doc__ = (
        f"{fn_name} matches the reference {op_name} (a vmamba_ref.testing property test)."
    )
    return test
