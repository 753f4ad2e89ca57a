"""Claims of vmamba_ref/cross_scan.py: the route orders of the spec, and cross-merge as the
adjoint of cross-scan."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vmamba_ref import cross_merge, cross_scan, cross_scan_routes, route_positions
from vmamba_ref.testing.tolerances import FLOAT64_REWRITE

SIDES = st.integers(1, 9)


def test_route_orders_on_a_2x3_grid():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # values are the row-major positions
    xs = cross_scan(x)[0, :, 0].tolist()  # (k, l)
    assert xs == [
        [0, 1, 2, 3, 4, 5],
        [0, 3, 1, 4, 2, 5],
        [5, 4, 3, 2, 1, 0],
        [5, 2, 4, 1, 3, 0],
    ]


@given(h=SIDES, w=SIDES)
def test_every_route_visits_every_position_once(h, w):
    pos = route_positions(h, w)  # (k, l)
    for route in pos:
        assert sorted(route.tolist()) == list(range(h * w))


@given(b=st.integers(1, 2), d=st.integers(1, 3), h=SIDES, w=SIDES, seed=st.integers(0, 2**16))
def test_cross_merge_is_the_adjoint_of_cross_scan(b, d, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, h, w, generator=g, dtype=torch.float64)
    ys = torch.randn(b, 4, d, h, w, generator=g, dtype=torch.float64)
    lhs = (cross_scan(x) * ys.flatten(3)).sum()  # <scan(x), y>
    rhs = (x * cross_merge(ys)).sum()  # <x, merge(y)>
    torch.testing.assert_close(lhs, rhs, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)


@given(b=st.integers(1, 2), d=st.integers(1, 3), h=SIDES, w=SIDES)
def test_merge_of_scan_is_four_times_the_input(b, d, h, w):
    x = torch.randn(b, d, h, w, dtype=torch.float64)
    assert torch.equal(cross_merge(cross_scan(x).view(b, 4, d, h, w)), 4 * x)


def test_cross_scan_routes_with_one_map_equals_cross_scan():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(cross_scan_routes(x[:, None].expand(2, 4, 3, 4, 5)), cross_scan(x))


def test_cross_scan_is_differentiable_and_its_gradient_is_merge():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(1, 4, 2, 12, dtype=torch.float64)
    (cross_scan(x) * ys).sum().backward()
    torch.testing.assert_close(x.grad, cross_merge(ys.view(1, 4, 2, 3, 4)))


@pytest.mark.parametrize(
    ("fn", "arg", "message"),
    [
        (cross_scan, torch.zeros(2, 3, 4), r"`x` must have shape \(b, d, h, w\)"),
        (cross_merge, torch.zeros(1, 3, 2, 2, 2), r"`ys` must have shape \(b, k=4, d, h, w\)"),
        (cross_scan_routes, torch.zeros(1, 2, 1, 2, 2), r"`xk` must have shape \(b, k=4, d, h, w\)"),
    ],
)
def test_bad_shapes_name_the_argument(fn, arg, message):
    with pytest.raises(ValueError, match=message):
        fn(arg)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="`x` must have dtype"):
        cross_scan(torch.zeros(1, 1, 2, 2, dtype=torch.int64))
