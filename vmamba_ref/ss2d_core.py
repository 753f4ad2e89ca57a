"""The SS2D core: cross-scan, selective scan on every route, cross-merge, as one function.

VMamba section 3.3, equation for SS2D: y = merge(S6_k(scan_k(x)) for k in 0..3).

Every input arrives on the grid. The step-size logits and the B/C projections are computed per
pixel from the feature map (they are 1x1 projections), so they commute with the route
permutation: projecting then reading along a route equals reading then projecting. Keeping them
on the grid lets a fused kernel read everything in route order straight from the grid and
accumulate the merged output in place, never materializing the four scanned copies.

    x      (b, d, h, w)        the feature map, the input u of every route
    delta  (b, k, d, h, w)     step-size logits of route k at each pixel
    A      (k*d, n)
    B, C   (b, k, n, h, w)     route k's projections at each pixel
    D, delta_bias (k*d,)
    -> y   (b, d, h, w)        sum over routes, in the scan's computation dtype

Official implementation: `cross_selective_scan` in VMamba's `vmamba.py`, which cross-scans x,
projects in route order and merges. Deviation: the projections happen on the grid (see above),
which the model's test checks against the official order.
"""

from __future__ import annotations

import torch

from vmamba_ref.contract import ROUTES, check_ss2d_core_args
from vmamba_ref.cross_scan import cross_merge, cross_scan, cross_scan_routes
from vmamba_ref.selective_scan import selective_scan


def ss2d_core(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Cross-scan x and the per-route parameters, scan every route, cross-merge. -> (b, d, h, w)."""
    b, d, h, w, n = check_ss2d_core_args("ss2d_core", x, delta, A, B, C)
    l = h * w
    xs = cross_scan(x).reshape(b, ROUTES * d, l)  # (b, k*d, l)
    deltas = cross_scan_routes(delta).reshape(b, ROUTES * d, l)  # (b, k*d, l)
    Bs = cross_scan_routes(B)  # (b, k, n, l)
    Cs = cross_scan_routes(C)  # (b, k, n, l)
    ys = selective_scan(xs, deltas, A, Bs, Cs, D, delta_bias, delta_softplus)  # (b, k*d, l)
    return cross_merge(ys.view(b, ROUTES, d, h, w))  # (b, d, h, w)
