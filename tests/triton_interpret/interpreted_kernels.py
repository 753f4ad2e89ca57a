"""Claims of vmamba_fast/triton: every kernel, forward and every gradient, equals the reference.

Run through Triton's interpreter on CPU tensors. TRITON_INTERPRET=1 must be set before triton is
imported, so this file runs in its own pytest process, started by
tests/test_triton_interpreter.py; its name keeps the normal run from collecting it. By hand:

    TRITON_INTERPRET=1 python -m pytest tests/triton_interpret/interpreted_kernels.py

The interpreter runs a kernel's tile operations through NumPy, and a parallel scan element by
element, so sizes stay small (l <= 25, n <= 3, a few programs). Small tiles, drawn with the
inputs, make those sizes cross channel and chunk boundaries; the public functions run with
their default tiles on pinned cases, including a sequence longer than one default chunk.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import vmamba_fast  # noqa: E402
import vmamba_ref  # noqa: E402
from vmamba_fast.triton.common import is_interpreted  # noqa: E402
from vmamba_fast.triton.cross_scan import cross_merge, cross_scan  # noqa: E402
from vmamba_fast.triton.selective_scan import (  # noqa: E402
    ScanBlocks,
    cuda_selective_scan_bwd,
    cuda_selective_scan_fwd,
    selective_scan_blocked,
)
from vmamba_fast.triton.ss2d_core import (  # noqa: E402
    cuda_ss2d_core_bwd,
    cuda_ss2d_core_fwd,
    ss2d_core_blocked,
)
from vmamba_ref.testing.cases import SelectiveScanCase, SS2DCoreCase  # noqa: E402
from vmamba_ref.testing.compare import assert_matches_reference  # noqa: E402
from vmamba_ref.testing.strategies import (  # noqa: E402
    cross_merge_inputs,
    cross_scan_inputs,
    selective_scan_inputs,
    ss2d_core_inputs,
)
from vmamba_ref.testing.tolerances import tolerance  # noqa: E402

if not is_interpreted():
    pytest.skip(
        "triton was imported without TRITON_INTERPRET=1; run this file through "
        "tests/test_triton_interpreter.py",
        allow_module_level=True,
    )

DTYPES = (torch.float32, torch.bfloat16)


def interpreted(examples: int) -> settings:
    """Fewer examples than the Numba tests: each one runs the kernels in the interpreter."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


BLOCKS = st.builds(
    ScanBlocks, block_d=st.sampled_from([1, 2, 4]), block_t=st.sampled_from([2, 4, 8])
)


def _blocked(fn, blocks):
    def run(**inputs):
        return fn(**inputs, blocks=blocks)

    run.__name__ = f"{fn.__name__}[{blocks.block_d}x{blocks.block_t}]"
    return run


@interpreted(10)
@given(inputs=cross_scan_inputs(dtypes=(*DTYPES, torch.float64), requires_grad=True))
def test_cross_scan_matches_reference(inputs):
    assert_matches_reference(cross_scan, inputs, op="cross_scan", check_grad=True)


@interpreted(10)
@given(inputs=cross_merge_inputs(dtypes=(*DTYPES, torch.float64), requires_grad=True))
def test_cross_merge_matches_reference(inputs):
    assert_matches_reference(cross_merge, inputs, op="cross_merge", check_grad=True)


@interpreted(10)
@given(
    inputs=selective_scan_inputs(
        dtypes=DTYPES,
        routes=(1, 2, 4),
        max_channels=5,
        max_length=13,  # more than one tile of the largest block_t (8), not a multiple of it
        max_state=3,
        inits=("mamba", "random", "zero"),
        requires_grad=True,
    ),
    blocks=BLOCKS,
)
def test_selective_scan_and_every_gradient_match_reference(inputs, blocks):
    fn = _blocked(selective_scan_blocked, blocks)
    assert_matches_reference(fn, inputs, op="selective_scan", check_grad=True)


@interpreted(9)
@given(
    inputs=ss2d_core_inputs(
        dtypes=DTYPES,
        max_batch=2,
        max_channels=3,
        max_side=4,
        max_state=2,
        inits=("mamba", "random", "zero"),
        requires_grad=True,
    ),
    blocks=BLOCKS,
)
def test_fused_ss2d_core_and_every_gradient_match_reference(inputs, blocks):
    fn = _blocked(ss2d_core_blocked, blocks)
    assert_matches_reference(fn, inputs, op="ss2d_core", check_grad=True)


@pytest.mark.parametrize(
    "case",
    [
        # One step: a chunk that is almost all padding.
        SelectiveScanCase(batch=2, routes=4, channels=2, length=1, state=1, with_initial_state=True, return_last_state=True),
        # 70 steps: more than one default chunk of 64.
        SelectiveScanCase(batch=1, routes=1, channels=1, length=70, state=1, init="random"),
        # The extreme step sizes of the test kit, and the dtypes the hypothesis draws leave out.
        SelectiveScanCase(batch=1, routes=2, channels=3, length=9, state=2, init="huge_step", dtype=torch.float16),
        SelectiveScanCase(batch=1, routes=2, channels=3, length=9, state=3, init="tiny_step", dtype=torch.float64, with_initial_state=True, return_last_state=True),
        SelectiveScanCase(batch=1, routes=1, channels=2, length=5, state=1, delta_softplus=False, with_D=False, with_delta_bias=False),
    ],
    ids=repr,
)  # fmt: skip
def test_public_selective_scan_with_default_tiles(case):
    inputs = SelectiveScanCase(**{**case.__dict__, "requires_grad": True}).build()
    fn = vmamba_fast.get_ops("triton").selective_scan
    assert_matches_reference(fn, inputs, op="selective_scan", check_grad=True)


@pytest.mark.parametrize(
    "case",
    [
        SS2DCoreCase(batch=1, channels=2, height=3, width=5, state=1),  # h != w
        SS2DCoreCase(batch=2, channels=1, height=1, width=1, state=2, init="zero"),  # l = 1
        SS2DCoreCase(batch=1, channels=3, height=9, width=8, state=1, init="random", dtype=torch.float64),
        SS2DCoreCase(batch=1, channels=2, height=2, width=3, state=2, init="huge_step", dtype=torch.float16, with_D=False),
    ],
    ids=repr,
)  # fmt: skip
def test_public_ss2d_core_with_default_tiles(case):
    inputs = SS2DCoreCase(**{**case.__dict__, "requires_grad": True}).build()
    fn = vmamba_fast.get_ops("triton").ss2d_core
    assert_matches_reference(fn, inputs, op="ss2d_core", check_grad=True)


def test_chunked_scan_carries_the_state_like_one_scan():
    """A scan split in two, the second half started from the first half's last state, equals the
    whole scan: the chunk boundaries inside the kernel and the one between calls agree."""
    args = SelectiveScanCase(
        batch=1, routes=2, channels=3, length=12, state=2, init="random"
    ).build()
    scan = vmamba_fast.get_ops("triton").selective_scan
    whole = scan(**args)  # (b, k*d, l)
    first, second = dict(args), dict(args)
    for name in ("u", "delta", "B", "C"):
        first[name], second[name] = args[name][..., :5], args[name][..., 5:]
    y1, h1 = scan(**{**first, "return_last_state": True})  # (b, k*d, 5), (b, k*d, n)
    y2 = scan(**{**second, "initial_state": h1})  # (b, k*d, 7)
    tol = tolerance(torch.float32)
    torch.testing.assert_close(torch.cat([y1, y2], dim=-1), whole, rtol=tol.rtol, atol=tol.atol)


# The kernels that vmamba_fast/ops.py registers for CUDA tensors, used the way an operator's
# autograd uses them: the forward keeps only its inputs, the backward kernel gets them again.
class ScanThroughOperatorKernels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, initial_state)
        ctx.delta_softplus = delta_softplus
        return cuda_selective_scan_fwd(
            u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
        )

    @staticmethod
    def backward(ctx, dy, dlast):
        inputs = ctx.saved_tensors
        grads = cuda_selective_scan_bwd(dy, dlast, *inputs, ctx.delta_softplus)
        return (*(None if t is None else g for g, t in zip(grads, inputs, strict=True)), None)


class SS2DThroughOperatorKernels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_softplus):
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return cuda_ss2d_core_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus)

    @staticmethod
    def backward(ctx, dy):
        inputs = ctx.saved_tensors
        grads = cuda_ss2d_core_bwd(dy, *inputs, ctx.delta_softplus)
        return (*(None if t is None else g for g, t in zip(grads, inputs, strict=True)), None)


def scan_through_operator_kernels(
    u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, initial_state=None,
    return_last_state=False,
):  # fmt: skip
    y, h_last = ScanThroughOperatorKernels.apply(
        u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus
    )
    return (y, h_last) if return_last_state else y


def ss2d_through_operator_kernels(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    return SS2DThroughOperatorKernels.apply(x, delta, A, B, C, D, delta_bias, delta_softplus)


@interpreted(6)
@given(
    inputs=selective_scan_inputs(
        dtypes=DTYPES, routes=(1, 4), max_channels=3, max_length=17, max_state=2, requires_grad=True
    )
)
def test_operator_kernels_of_the_scan_match_reference(inputs):
    assert_matches_reference(
        scan_through_operator_kernels, inputs, op="selective_scan", check_grad=True
    )


@interpreted(4)
@given(
    inputs=ss2d_core_inputs(
        dtypes=DTYPES, max_channels=2, max_side=4, max_state=2, requires_grad=True
    )
)
def test_operator_kernels_of_the_ss2d_core_match_reference(inputs):
    assert_matches_reference(ss2d_through_operator_kernels, inputs, op="ss2d_core", check_grad=True)


def test_operator_kernels_give_absent_parameters_the_gradient_of_zeros():
    """The backward operators return a gradient for a D, delta_bias or initial state that is
    None: the one with respect to zeros, as the Numba kernels do."""
    args = SelectiveScanCase(
        batch=2, routes=2, channels=3, length=6, state=2, init="random"
    ).build()
    u, delta, A, B, C = (args[k] for k in ("u", "delta", "A", "B", "C"))
    b, kd, l = u.shape
    zeros = {
        "D": torch.zeros(kd, requires_grad=True),
        "delta_bias": torch.zeros(kd, requires_grad=True),
        "initial_state": torch.zeros(b, kd, B.shape[2], requires_grad=True),
    }
    dy = torch.randn(b, kd, l)
    grads = cuda_selective_scan_bwd(dy, None, u, delta, A, B, C, None, None, None, True)
    y = vmamba_ref.selective_scan(u, delta, A, B, C, delta_softplus=True, **zeros)
    expected = torch.autograd.grad(y, list(zeros.values()), dy)
    tol = tolerance(torch.float32, grad=True)
    for got, want in zip(grads[5:], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=tol.rtol, atol=tol.atol)
