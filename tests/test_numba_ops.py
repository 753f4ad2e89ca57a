"""The `vmamba::` custom operators: torch.library.opcheck, torch.compile and the FLOP counter.

- opcheck (schema, fake/meta implementation, autograd registration, AOT dispatch with dynamic
  shapes) passes for every operator, with and without the optional arguments;
- torch.compile traces the Numba backend's functions into a graph without breaks, each scan
  operator one node, and the compiled function gives the eager results and gradients;
- FlopCounterMode counts the VMamba authors' 9*b*l*(k*d)*n + b*(k*d)*l for the scan and for
  the fused core's four routes.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vmamba_fast import ops
from vmamba_fast.numba import cross_merge, cross_scan, selective_scan, ss2d_core
from vmamba_ref.testing.cases import SelectiveScanCase, SS2DCoreCase
from vmamba_ref.testing.tolerances import tolerance


def _scan_case(optional: bool, dtype=torch.float32, softplus: bool = True, **sizes):
    shape = {"batch": 2, "routes": 2, "channels": 3, "length": 11, "state": 2, **sizes}
    return SelectiveScanCase(
        **shape, dtype=dtype, with_D=optional, with_delta_bias=optional,
        with_initial_state=optional, delta_softplus=softplus, requires_grad=True,
    ).build()  # fmt: skip


def _core_case(optional: bool, dtype=torch.float32):
    return SS2DCoreCase(
        batch=2, channels=3, height=4, width=5, state=2, dtype=dtype, with_D=optional,
        with_delta_bias=optional, requires_grad=True,
    ).build()  # fmt: skip


@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw-step"])
@pytest.mark.parametrize("optional", [True, False], ids=["all-args", "no-optional"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_selective_scan(optional, dtype, softplus):
    a = _scan_case(optional, dtype, softplus)
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["delta_bias"])
    torch.library.opcheck(ops.selective_scan_fwd, (*args, a["initial_state"], softplus))
    y, last = ops.selective_scan_fwd(*args, a["initial_state"], softplus)
    grads = (torch.randn_like(y), torch.randn_like(last))
    inputs = tuple(t.detach() if t is not None else None for t in (*args, a["initial_state"]))
    torch.library.opcheck(ops.selective_scan_bwd, (*grads, *inputs, softplus))
    torch.library.opcheck(ops.selective_scan_bwd, (grads[0], None, *inputs, softplus))


@pytest.mark.parametrize("optional", [True, False], ids=["all-args", "no-optional"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_ss2d_core(optional, dtype):
    a = _core_case(optional, dtype)
    args = (a["x"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["delta_bias"])
    torch.library.opcheck(ops.ss2d_core_fwd, (*args, True))
    dy = torch.randn(a["x"].shape, dtype=dtype)
    inputs = tuple(t.detach() if t is not None else None for t in args)
    torch.library.opcheck(ops.ss2d_core_bwd, (dy, *inputs, True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck_cross_scan_and_merge(dtype):
    x = torch.randn(2, 3, 4, 5, dtype=dtype, requires_grad=True)
    ys = torch.randn(2, 4, 3, 4, 5, dtype=dtype, requires_grad=True)
    torch.library.opcheck(ops.cross_scan, (x,))
    torch.library.opcheck(ops.cross_merge, (ys,))


class _GraphRecorder:
    """A torch.compile backend that records the FX graphs it receives and runs them eagerly."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.targets += [str(node.target) for node in gm.graph.nodes if node.op == "call_function"]
        return gm.forward


def test_compile_traces_each_operator_as_one_node():
    a = _core_case(True)
    scan = _scan_case(True)

    def f(x, delta, A, B, C, D, delta_bias, u, sdelta, sA, sB, sC):
        y = ss2d_core(x, delta, A, B, C, D, delta_bias)  # (b, d, h, w)
        xs = cross_scan(y)  # (b, k, d, l)
        merged = cross_merge(xs.reshape(*xs.shape[:3], *x.shape[2:]))  # (b, d, h, w)
        ys = selective_scan(u, sdelta, sA, sB, sC)  # (b, k*d, l)
        return merged.square().sum() + ys.sum()

    inputs = (
        *(a[k] for k in ("x", "delta", "A", "B", "C", "D", "delta_bias")),
        *(scan[k] for k in ("u", "delta", "A", "B", "C")),
    )
    recorder = _GraphRecorder()
    compiled = torch.compile(f, backend=recorder, fullgraph=True)
    out = compiled(*inputs)
    for name in ("ss2d_core_fwd", "cross_scan", "cross_merge", "selective_scan_fwd"):
        assert sum(name in t for t in recorder.targets) == 1, (name, recorder.targets)

    eager = f(*inputs)
    tol = tolerance(torch.float32, backend="numba")
    torch.testing.assert_close(out, eager, rtol=tol.rtol, atol=tol.atol)
    grads = torch.autograd.grad(out, inputs)
    eager_grads = torch.autograd.grad(f(*inputs), inputs)
    grad_tol = tolerance(torch.float32, grad=True, backend="numba")
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=grad_tol.rtol, atol=grad_tol.atol)


def test_compile_with_aot_autograd_matches_eager():
    """The fake implementations and the autograd formulas carry through AOTAutograd."""
    a = _scan_case(True, length=9)
    args = tuple(a[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias", "initial_state"))

    def f(*args):
        y, last = selective_scan(*args[:7], True, args[7], True)
        return y.sum() + last.square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    grads = torch.autograd.grad(compiled(*args), args)
    eager = torch.autograd.grad(f(*args), args)
    tol = tolerance(torch.float32, grad=True, backend="numba")
    for g, e in zip(grads, eager, strict=True):
        torch.testing.assert_close(g, e, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("n", [1, 16])
def test_flop_counter_counts_the_authors_formula_for_the_scan(n):
    b, k, d, l = 2, 4, 6, 13
    a = _scan_case(True, batch=b, routes=k, channels=d, length=l, state=n)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        selective_scan(*(a[key] for key in ("u", "delta", "A", "B", "C", "D", "delta_bias")))
    assert counter.get_total_flops() == 9 * b * l * (k * d) * n + b * (k * d) * l
    assert counter.get_flop_counts()["Global"] == {
        torch.ops.vmamba.selective_scan_fwd: 9 * b * l * k * d * n + b * k * d * l
    }


def test_flop_counter_counts_four_routes_for_the_fused_core():
    a = _core_case(True)
    b, d, h, w = a["x"].shape
    n = a["A"].shape[1]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ss2d_core(*(a[key] for key in ("x", "delta", "A", "B", "C", "D", "delta_bias")))
    l = h * w
    assert counter.get_total_flops() == 9 * b * l * (4 * d) * n + b * (4 * d) * l


# ------------------------------------------------------------------ layouts: fakes match kernels


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """t's values with the last two dims' strides swapped (a transposed (b, k*d, l) u)."""
    return t.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(t.requires_grad)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_opcheck_selective_scan_with_strided_inputs(layout):
    """The backward's fake returns contiguous gradients, as the kernel does, whatever the
    inputs' strides."""
    a = _scan_case(True)
    relayout = _transposed if layout == "transposed" else (lambda t: t)
    args = [relayout(a[k]) for k in ("u", "delta")] + [a[k] for k in ("A", "B", "C")]
    args = (*args, a["D"], a["delta_bias"], a["initial_state"])
    torch.library.opcheck(ops.selective_scan_fwd, (*args, True))
    y, last = ops.selective_scan_fwd(*args, True)
    inputs = tuple(t.detach() for t in args)
    dy = relayout(torch.randn_like(y))
    torch.library.opcheck(ops.selective_scan_bwd, (dy, torch.randn_like(last), *inputs, True))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_ss2d_core_and_cross_ops_with_strided_inputs(layout):
    a = _core_case(True)
    relayout = _channels_last if layout == "channels_last" else (lambda t: t)
    args = (relayout(a["x"]), *(a[k] for k in ("delta", "A", "B", "C", "D", "delta_bias")))
    torch.library.opcheck(ops.ss2d_core_fwd, (*args, True))
    dy = relayout(torch.randn(a["x"].shape))
    torch.library.opcheck(ops.ss2d_core_bwd, (dy, *(t.detach() for t in args), True))
    torch.library.opcheck(ops.cross_scan, (relayout(a["x"]),))


def test_compiled_backward_with_transposed_u_and_channels_last_x():
    """AOTAutograd plans the backward from the fakes: strides that differ from the kernels'
    made the compiled backward raise."""
    scan = _scan_case(True, length=9)
    core = _core_case(True)
    inputs = (
        _transposed(scan["u"]), *(scan[k] for k in ("delta", "A", "B", "C")),
        _channels_last(core["x"]), *(core[k] for k in ("delta", "A", "B", "C")),
    )  # fmt: skip

    def f(u, delta, A, B, C, x, cdelta, cA, cB, cC):
        return selective_scan(u, delta, A, B, C).sum() + ss2d_core(x, cdelta, cA, cB, cC).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    grads = torch.autograd.grad(compiled(*inputs), inputs)
    eager = torch.autograd.grad(f(*inputs), inputs)
    tol = tolerance(torch.float32, grad=True, backend="numba")
    for g, e in zip(grads, eager, strict=True):
        torch.testing.assert_close(g, e, rtol=tol.rtol, atol=tol.atol)


def test_public_functions_compile_without_graph_breaks():
    """`vmamba_fast.<op>(..., backend="numba")` finds its backend through `get_ops`, which
    torch.compile traces through (fullgraph) whether or not the backend was loaded; in a process
    that never loaded it: tests/test_contract.py."""
    import vmamba_fast

    scan = _scan_case(False)
    core = _core_case(False)
    s_args = tuple(scan[k] for k in ("u", "delta", "A", "B", "C"))
    c_args = tuple(core[k] for k in ("x", "delta", "A", "B", "C"))

    def f(s_args, c_args):
        y = vmamba_fast.selective_scan(*s_args, backend="numba")
        z = vmamba_fast.ss2d_core(*c_args, backend="numba")
        xs = vmamba_fast.cross_scan(z, backend="numba")
        b, k, d, _ = xs.shape
        merged = vmamba_fast.cross_merge(xs.reshape(b, k, d, *z.shape[2:]), backend="numba")
        return y.sum() + merged.sum()

    compiled = torch.compile(f, backend="eager", fullgraph=True)(s_args, c_args)
    tol = tolerance(torch.float32, backend="numba")
    torch.testing.assert_close(compiled, f(s_args, c_args), rtol=tol.rtol, atol=tol.atol)
