"""The SS2D core in plain PyTorch: cross-scan, parallel selective scan, cross-merge.

VMamba section 3.3: y = merge(S6_k(scan_k(x)) for k in 0..3). Layouts are
`vmamba_ref.ss2d_core`'s: x (b, d, h, w); delta (b, k, d, h, w); A (k*d, n);
B, C (b, k, n, h, w); D, delta_bias (k*d,) -> y (b, d, h, w) in the scan's computation dtype.

This is the composition of the three exportable pieces of this backend, so it traces under
`torch.export` and exports to ONNX as standard operators.

Official implementation: `cross_selective_scan` in VMamba's `vmamba.py`. Deviation: as in the
reference core, the per-route projections arrive on the grid and are read along each route.
"""

from __future__ import annotations

import torch

from vmamba_fast.pytorch.cross_scan import cross_merge, cross_scan, cross_scan_routes
from vmamba_fast.pytorch.selective_scan import selective_scan
from vmamba_ref.contract import ROUTES, check_ss2d_core_args


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
