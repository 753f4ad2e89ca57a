"""Property-test your own kernel against the VMamba reference: a worked example.

You wrote a fast cross-scan (in Triton, CUDA, Numba, or, as here, vectorized PyTorch) and want to
know whether it is right. Hand-picked test shapes miss the cases that break kernels: a grid of
one row, h != w, sizes just past a block boundary, non-contiguous inputs. `vmamba_ref.testing`
draws such inputs with Hypothesis, compares your kernel with the reference (forward and
gradients, with the project's tolerance table), and when they disagree, shrinks the input to a
minimal counterexample and says what looks wrong.

This script:

1. defines `my_cross_scan`, user-style, with a planted off-by-one in the reversed routes;
2. runs `check_cross_scan` on it: Hypothesis finds a failing input, shrinks it to a grid of two
   pixels, and the report names the broken routes;
3. fixes the bug and checks again: forward and gradients pass;
4. checks a third-party kernel as it is, with no adapter: `vmamba_fast.compat.selective_scan_fn`,
   which has mamba_ssm's signature (no `initial_state`, `delta_softplus=False` by default), a
   last state without gradient, and float16 outputs for float16 inputs; the report lists what
   was not tested;
5. runs the kit on the planted-bug kernels of `vmamba_ref.testing.mutants` and on the regression
   zoo of `vmamba_ref.testing.zoo` (bugs that shipped in real scan kernels), and prints how many
   examples Hypothesis needed to find each bug.

Run:  python examples/check_my_kernel.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from vmamba_fast.compat import selective_scan_fn
from vmamba_ref.testing import (
    KernelMismatchError,
    check_cross_scan,
    check_kernel,
    check_selective_scan,
)
from vmamba_ref.testing.mutants import MUTANTS
from vmamba_ref.testing.zoo import ZOO

# The "ci" profile is derandomized: every run tries the same examples, so the counts printed
# below are reproducible.
PROFILE = "ci"


def my_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Cross-scan: (b, d, h, w) -> (b, 4, d, h*w); rows, columns, then both read backwards."""
    b, d, h, w = x.shape
    l = h * w
    rows = x.reshape(b, d, l)  # (b, d, l) row-major
    cols = x.transpose(2, 3).reshape(b, d, l)  # (b, d, l) column-major
    # arange(l, 0, -1) indexed past the end, so it was clamped: the planted bug. Position l-1
    # is now read twice and position 0 never.
    backwards = torch.arange(l, 0, -1, device=x.device).clamp(max=l - 1)  # (l,)
    return torch.stack(
        [rows, cols, rows[..., backwards], cols[..., backwards]], dim=1
    )  # (b, 4, d, l)


def my_cross_scan_fixed(x: torch.Tensor) -> torch.Tensor:
    """Cross-scan: (b, d, h, w) -> (b, 4, d, h*w), with the reversed index right."""
    b, d, h, w = x.shape
    l = h * w
    rows = x.reshape(b, d, l)  # (b, d, l) row-major
    cols = x.transpose(2, 3).reshape(b, d, l)  # (b, d, l) column-major
    backwards = torch.arange(l - 1, -1, -1, device=x.device)  # (l,) l-1, ..., 0
    return torch.stack(
        [rows, cols, rows[..., backwards], cols[..., backwards]], dim=1
    )  # (b, 4, d, l)


def main() -> None:
    """Catch the planted bug, pass the fix, then time the kit on the mutants."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples for the passing run")
    args = parser.parse_args()
    examples = 25 if args.quick else 300

    print("1. Checking my_cross_scan (with a planted off-by-one in the reversed routes)\n")
    try:
        check_cross_scan(my_cross_scan, settings=PROFILE)
    except KernelMismatchError as err:
        print(err)
        print(f"\n   -> caught after {err.examples_to_failure} example(s)\n")
    else:
        raise SystemExit("the planted bug was not caught")

    print(f"2. Checking my_cross_scan_fixed on {examples} examples")
    report = check_cross_scan(my_cross_scan_fixed, settings=PROFILE, max_examples=examples)
    print(
        f"   -> passed: {report.examples} examples, gradients compared on {report.gradient_examples}\n"
    )

    third_party = max(examples // 5, 5)
    print(f"3. Checking a third-party kernel as it is, on {third_party} examples per dtype group:")
    print("   vmamba_fast.compat.selective_scan_fn, mamba_ssm's signature, no adapter")
    for dtypes in ((torch.float32, torch.float64), (torch.float16, torch.bfloat16)):
        report = check_selective_scan(
            selective_scan_fn, dtypes=dtypes, settings=PROFILE, max_examples=third_party
        )
        print("   " + str(report).replace("\n", "\n   "))
    print()

    print("4. The kit on the planted bugs of vmamba_ref.testing.mutants and vmamba_ref.testing.zoo")
    print(f"   {'bug':<20} {'op':<15} {'examples to find':>16}  {'seconds':>7}  report names it")
    planted = [(m.name, m.op, m.kernel, m.symptom, m.check_grad, False) for m in MUTANTS]
    historical = [(z.name, z.op, z.kernel, z.symptom, None, z.deterministic) for z in ZOO]
    for name, op, kernel, symptom, check_grad, deterministic in planted + historical:
        start = time.perf_counter()
        try:
            check_kernel(
                kernel, op, check_grad=check_grad, settings=PROFILE, deterministic=deterministic
            )
        except KernelMismatchError as err:
            named = "yes" if symptom in str(err) else "NO"
            print(
                f"   {name:<20} {op:<15} {err.examples_to_failure:>16}  "
                f"{time.perf_counter() - start:>7.1f}  {named}: {symptom!r}"
            )
        else:
            raise SystemExit(f"planted bug {name} was not caught")


if __name__ == "__main__":
    main()
