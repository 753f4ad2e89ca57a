"""The Numba cross-scan and cross-merge equal the reference's, bit for bit, and keep its algebra.

- property tests over the kit's strategies (batch 1-3, channels 1-40, h and w 1-12
  independently, non-contiguous inputs), every dtype, forward and gradient;
- exact equality with the reference for float32 and float64 (a permutation, and sums in the
  reference's order), the spec's 2x3 example;
- cross-merge is the adjoint of cross-scan, merge(scan(x)) = 4x;
- validation: the reference's errors, and tensors off the CPU name the backends to use.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from vmamba_fast.numba import cross_merge, cross_scan
from vmamba_ref.contract import BackendUnavailableError
from vmamba_ref.cross_scan import cross_merge as ref_cross_merge
from vmamba_ref.cross_scan import cross_scan as ref_cross_scan
from vmamba_ref.testing.compare import assert_matches_reference
from vmamba_ref.testing.strategies import cross_merge_inputs, cross_scan_inputs
from vmamba_ref.testing.tolerances import tolerance

ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BOUNDS = {"max_batch": 3, "max_channels": 40, "max_side": 12}


@settings(max_examples=30)
@given(inputs=cross_scan_inputs(dtypes=ALL_DTYPES, requires_grad=True, **BOUNDS))
def test_cross_scan_matches_reference(inputs):
    assert_matches_reference(cross_scan, inputs, op="cross_scan", check_grad=True)
    assert torch.equal(cross_scan(inputs["x"].detach()), ref_cross_scan(inputs["x"].detach()))


@settings(max_examples=30)
@given(inputs=cross_merge_inputs(dtypes=ALL_DTYPES, requires_grad=True, **BOUNDS))
def test_cross_merge_matches_reference(inputs):
    assert_matches_reference(cross_merge, inputs, op="cross_merge", check_grad=True)
    ys = inputs["ys"].detach()
    if ys.dtype in (torch.float32, torch.float64):  # the same sums in the same order
        assert torch.equal(cross_merge(ys), ref_cross_merge(ys))


def test_routes_of_a_2x3_grid():
    """The spec's example: a 2x3 grid holding its row-major positions."""
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    routes = [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert cross_scan(x)[0, :, 0].tolist() == routes


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (5, 1), (3, 4), (12, 9)])
def test_cross_merge_is_the_adjoint_of_cross_scan(h, w):
    """<scan(x), ys> = <x, merge(ys)>, and so merge(scan(x)) = 4x."""
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)  # (b, d, h, w)
    ys = torch.randn(2, 4, 3, h, w, generator=g, dtype=torch.float64)  # (b, k, d, h, w)
    lhs = (cross_scan(x) * ys.flatten(3)).sum()
    rhs = (x * cross_merge(ys)).sum()
    tol = tolerance(torch.float64, backend="numba")
    torch.testing.assert_close(lhs, rhs, rtol=tol.rtol, atol=tol.atol)
    merged = cross_merge(cross_scan(x).reshape(2, 4, 3, h, w))
    torch.testing.assert_close(merged, 4 * x, rtol=tol.rtol, atol=tol.atol)


def _bad_scan_inputs():
    x = torch.randn(2, 3, 4, 5)
    yield "3-D", (x[0],)
    yield "integer", (x.long(),)
    yield "empty grid", (x[:, :, :0],)
    yield "not a tensor", (x.tolist(),)


def _bad_merge_inputs():
    ys = torch.randn(2, 4, 3, 4, 5)
    yield "two routes", (ys[:, :2],)
    yield "4-D", (ys[0],)
    yield "empty grid", (ys[..., :0],)


@pytest.mark.parametrize(
    "name, args", list(_bad_scan_inputs()), ids=[n for n, _ in _bad_scan_inputs()]
)
def test_cross_scan_errors_are_the_reference_errors(name, args):
    with pytest.raises((TypeError, ValueError)) as ref_err:
        ref_cross_scan(*args)
    with pytest.raises(ref_err.type) as err:
        cross_scan(*args)
    assert str(err.value) == str(ref_err.value)


@pytest.mark.parametrize(
    "name, args", list(_bad_merge_inputs()), ids=[n for n, _ in _bad_merge_inputs()]
)
def test_cross_merge_errors_are_the_reference_errors(name, args):
    with pytest.raises((TypeError, ValueError)) as ref_err:
        ref_cross_merge(*args)
    with pytest.raises(ref_err.type) as err:
        cross_merge(*args)
    assert str(err.value) == str(ref_err.value)


def test_tensors_off_the_cpu_name_the_backends_to_use():
    with pytest.raises(BackendUnavailableError, match="backend='triton'"):
        cross_scan(torch.empty(1, 2, 3, 4, device="meta"))
    with pytest.raises(BackendUnavailableError, match="backend='triton'"):
        cross_merge(torch.empty(1, 4, 2, 3, 4, device="meta"))
