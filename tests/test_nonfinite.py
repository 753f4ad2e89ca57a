"""NaN and infinity in the inputs reach the outputs and gradients exactly where the reference
puts them, on every backend.

A selective scan carries a NaN or an infinity forward through the state (Mamba, Gu & Dao 2023,
section 3.2):

    dt_t = softplus(delta_t + delta_bias),  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
    y_t  = C_t h_t + D u_t

so a bad u_t, delta_t or B_t poisons y from step t on, and the gradients in a pattern of their
own. A kernel that clamps with a NaN-ignoring min (`tl.minimum` is minnum: `min(NaN, 20) = 20`)
silently turns a NaN step logit into dt = 20; one that reorders products can turn the
reference's +-inf into NaN. Following stumpy's tests, each case injects one NaN or infinity at
the start, the middle or the end of one input, and the test asserts that the NaN, +inf and -inf
masks of every output and every gradient equal the reference's, and that the finite elements
agree within the tolerance table.

The Triton kernels run here through Triton's interpreter, in a subprocess (TRITON_INTERPRET=1
must be set before triton is imported): tests/triton_interpret/interpreted_nonfinite.py runs the
same cases from this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import vmamba_ref
from vmamba_ref.contract import is_available
from vmamba_ref.testing.cases import SelectiveScanCase
from vmamba_ref.testing.tolerances import tolerance

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = ROOT / "tests" / "triton_interpret" / "interpreted_nonfinite.py"
INTERPRETER_TIMEOUT = 600  # seconds for the whole interpreted file

# Tiny, so that Triton's interpreter runs every case in seconds: b=1, k=2, d=3, n=3, l=12. No
# size is a power of two, so the Triton tiles have padded channels, states and steps, which must
# not turn 0 * inf into NaN.
SHAPE = {"batch": 1, "routes": 2, "channels": 3, "length": 12, "state": 3}
CHANNEL = 4  # the k*d row that receives the bad value (route 1, channel 1)
GRADIENT_INPUTS = ("u", "delta", "A", "B", "C", "D", "delta_bias")
NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Injection:
    """One bad value: `value` at time step `step` of input `name`."""

    name: str  # "u", "delta" or "B"
    step: int
    value: float

    @property
    def id(self) -> str:
        return f"{self.name}-{self.value}-at-{self.step}"

    def apply(self, inputs: dict) -> dict:
        t = inputs[self.name].clone()
        if self.name == "B":  # (b, k, n, l): route CHANNEL // d, state 0
            t[0, CHANNEL // SHAPE["channels"], 0, self.step] = self.value
        else:  # (b, k*d, l)
            t[0, CHANNEL, self.step] = self.value
        return {**inputs, self.name: t}


_L = SHAPE["length"]
INJECTIONS = [
    *(Injection(name, step, NAN) for name in ("u", "delta") for step in (0, _L // 2, _L - 1)),
    *(Injection(name, _L // 2, value) for name in ("u", "delta") for value in (INF, -INF)),
    Injection("B", _L // 2, NAN),
]
IDS = [c.id for c in INJECTIONS]


def case_inputs(injection: Injection) -> dict:
    inputs = SelectiveScanCase(**SHAPE, with_initial_state=True, return_last_state=True).build()
    return injection.apply(inputs)


def outputs_and_gradients(fn, inputs: dict) -> dict[str, torch.Tensor]:
    """y, the last state and the gradients of sum(y * w + h_last * v) for fixed finite w, v."""
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in GRADIENT_INPUTS}
    y, last = fn(**{**inputs, **leaves})
    w = torch.linspace(-1.0, 1.0, y.numel()).reshape(y.shape)
    v = torch.linspace(0.5, 1.5, last.numel()).reshape(last.shape)
    grads = torch.autograd.grad((y * w).sum() + (last * v).sum(), list(leaves.values()))
    results = {"y": y.detach(), "last_state": last.detach()}
    results.update({f"d{k}": g for k, g in zip(leaves, grads, strict=True)})
    return results


def assert_same_nonfinite(got: dict, expected: dict, backend: str, dtype: torch.dtype) -> None:
    """Equal NaN, +inf and -inf masks in every tensor; finite elements within tolerance."""
    problems = []
    for name, e in expected.items():
        g = got[name].to(e.dtype)
        for what, mask in (
            ("NaN", torch.isnan),
            ("+inf", torch.isposinf),
            ("-inf", torch.isneginf),
        ):
            bad = mask(g) != mask(e)
            if bad.any():
                where = bad.nonzero()[:4].tolist()
                problems.append(
                    f"{name}: {what} differs at {int(bad.sum())} of {e.numel()} elements, "
                    f"first {where}: got {[g[tuple(i)].item() for i in where]}, "
                    f"reference {[e[tuple(i)].item() for i in where]}"
                )
        finite = torch.isfinite(g) & torch.isfinite(e)
        tol = tolerance(dtype, grad=name.startswith("d"), backend=backend)
        err = (g - e).abs()[finite]
        limit = (tol.atol + tol.rtol * e.abs())[finite]
        if (err > limit).any():
            problems.append(f"{name}: finite elements off by up to {err.max().item():.3g}")
    assert not problems, f"{backend}:\n" + "\n".join(problems)


def reference(inputs: dict) -> dict[str, torch.Tensor]:
    return outputs_and_gradients(vmamba_ref.selective_scan, inputs)


def check_backend(fn, backend: str, injection: Injection) -> None:
    inputs = case_inputs(injection)
    got = outputs_and_gradients(fn, inputs)
    assert_same_nonfinite(got, reference(inputs), backend, inputs["u"].dtype)


def test_each_injection_reaches_the_reference_outputs_except_a_zero_step():
    for injection in INJECTIONS:
        expected = reference(case_inputs(injection))
        zero_step = injection.name == "delta" and injection.value == -INF  # dt = softplus = 0
        assert torch.isfinite(expected["y"]).all() == zero_step, injection.id


@pytest.mark.parametrize("injection", INJECTIONS, ids=IDS)
def test_numba_propagates_nan_and_inf_like_the_reference(injection):
    from vmamba_fast.numba import selective_scan

    check_backend(selective_scan, "numba", injection)


@pytest.mark.parametrize("injection", INJECTIONS, ids=IDS)
def test_torch_propagates_nan_and_inf_like_the_reference(injection):
    """An infinite dt_t or u_t (u = +-inf, delta = +inf) is the case that autograd through the
    odd-even scan got wrong: +-inf where the loop's sum over n is NaN, NaN in dA where the loop's
    is +-inf. The backend's `StateRecurrence` forms the loop's products instead."""
    from vmamba_fast.pytorch import selective_scan

    check_backend(selective_scan, "torch", injection)


@pytest.mark.slow
@pytest.mark.skipif(not is_available("triton"), reason="triton is not installed")
def test_triton_propagates_nan_and_inf_like_the_reference_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", str(INTERPRETED)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=INTERPRETER_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"interpreted run took over {INTERPRETER_TIMEOUT} s:\n{e.stdout}")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    assert f"{len(INJECTIONS)} passed" in result.stdout, result.stdout[-3000:]
