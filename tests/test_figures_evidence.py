"""The measurements behind the tutorial's evidence figures (`vmamba_ref.tools.evidence`) and the
kernel tutorial's Numba scan (`vmamba_ref.tools.kernel_tutorial`) say what the pages claim."""

import math

import pytest
import torch

from vmamba_ref import selective_scan
from vmamba_ref.testing import tolerance
from vmamba_ref.tools.evidence import (
    impulse_response,
    memory_length,
    scan_jacobian,
    selectivity_example,
)


@pytest.mark.parametrize("h, w", [(1, 1), (2, 3), (4, 5), (5, 1)])
def test_one_route_is_causal_in_its_order_and_four_see_everything(h, w):
    l = h * w
    causal = torch.ones(l, l, dtype=torch.bool).tril()  # y[p] depends on x[q] for q <= p
    assert torch.equal(scan_jacobian(h, w, [0]) != 0, causal)
    assert torch.equal(scan_jacobian(h, w, [2]) != 0, causal.T)  # route 0 backwards
    assert (scan_jacobian(h, w) != 0).all()
    assert (scan_jacobian(h, w, [0, 2]) != 0).all()  # "through routes 0 and 2 at least"
    assert scan_jacobian(h, w).dtype == torch.float64


def test_rows_and_columns_forward_only_do_not_see_everything():
    seen = scan_jacobian(3, 3, [0, 1]) != 0  # routes 0 and 1 both start at the top-left token
    assert seen[0].tolist() == [True] + [False] * 8  # whose output sees only its own input
    assert seen[8].all()  # and both end at the bottom-right one, which sees everything


@pytest.mark.parametrize("a", [-1.0, -4.0])
def test_memory_length_is_one_over_dt_abs_a(a):
    dts = [0.0013, 0.007, 0.03, 0.11, 0.45]
    response = impulse_response(dts, a, length=1000)
    assert torch.allclose(response[:, 0], torch.ones(len(dts), dtype=torch.float64))
    t = torch.arange(1000, dtype=torch.float64)
    expected = torch.exp(torch.tensor(dts, dtype=torch.float64)[:, None] * a * t)  # exp(dt a)^t
    torch.testing.assert_close(response, expected)
    assert memory_length(response).tolist() == [math.floor(1 / (dt * -a)) + 1 for dt in dts]


def test_memory_length_of_a_response_that_never_decays():
    assert memory_length(torch.ones(2, 7, dtype=torch.float64)).tolist() == [7, 7]


def test_a_large_step_resets_the_state_and_a_tiny_one_ignores_the_token():
    ex = selectivity_example()
    before, after = slice(0, ex.marker), slice(ex.marker, None)
    assert (ex.fixed[0, after] - ex.fixed[1, after]).abs().min() > 0.1  # history still there
    gap_before = (ex.reset[0, before] - ex.reset[1, before]).abs().max()
    assert (ex.reset[0, after] - ex.reset[1, after]).abs().max() < 1e-4 * gap_before
    jump = ex.fixed[0, ex.spike] - ex.fixed[0, ex.spike - 1]
    ignored = ex.ignore[0, ex.spike] - ex.ignore[0, ex.spike - 1]
    assert jump > 0.4 and abs(ignored) < 1e-4


def test_kernel_tutorial_scan_matches_the_reference_and_plants_one_line():
    kernel_tutorial = pytest.importorskip("vmamba_ref.tools.kernel_tutorial")
    generator = torch.Generator().manual_seed(0)
    b, k, d, l, n = 2, 4, 3, 17, 2
    u, delta = torch.randn(2, b, k * d, l, generator=generator)
    A = -torch.rand(k * d, n, generator=generator) - 0.5
    B, C = torch.randn(2, b, k, n, l, generator=generator)
    D, bias = torch.randn(2, k * d, generator=generator)
    y = kernel_tutorial.selective_scan_fwd(u, delta, A, B, C, D, bias)
    assert y.dtype == torch.float32
    rule = tolerance(torch.float32)
    torch.testing.assert_close(y, selective_scan(u, delta, A, B, C, D, bias), rtol=rule.rtol, atol=rule.atol)
    without_D = kernel_tutorial.plant_bug("y_t = D[c] * u[i_b, c, t]", "y_t = 0.0")
    torch.testing.assert_close(
        without_D(u, delta, A, B, C, D, bias), selective_scan(u, delta, A, B, C, None, bias),
        rtol=rule.rtol, atol=rule.atol,
    )  # fmt: skip
    with pytest.raises(ValueError, match="occurs 0 times"):
        kernel_tutorial.plant_bug("no such line", "y_t = 0.0")
