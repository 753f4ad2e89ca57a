"""Cross-scan and cross-merge from flips and transposes: standard ops that trace and export.

Paper section 3.3 (SS2D), figure 2; the route orders are `vmamba_ref.cross_scan`'s:

| k | route                  | built as                                   |
|---|------------------------|--------------------------------------------|
| 0 | row-major              | x.flatten(2)                               |
| 1 | column-major           | x.transpose(h, w).flatten(2)               |
| 2 | row-major, reversed    | route 0 flipped along l                    |
| 3 | column-major, reversed | route 1 flipped along l                    |

Cross-merge undoes each route and sums: flip routes 2 and 3 back onto routes 0 and 1, then view
the column-major sum as (w, h) and transpose it back to row-major. Every step is a view, a flip,
a transpose or an add, so autograd, `torch.compile`, `torch.export` and the ONNX exporter all
handle it without custom ops, and the backward of each function is the other one (they are
adjoint: <scan(x), y> = <x, merge(y)>).

Official implementation: `cross_scan_fwd` / `cross_merge_fwd` in VMamba's `csm_triton.py`
(torch branch), which this follows. Deviation: a per-route variant, `cross_scan_routes`, reads
route k's own map, for the step sizes and projections of the fused SS2D core.
"""

from __future__ import annotations

import torch

from vmamba_ref.contract import ROUTES, check_grid, check_shape, check_tensor


def _forward_routes(x: torch.Tensor) -> torch.Tensor:
    """Routes 0 and 1 of a (..., h, w) map: (..., h, w) -> (..., 2, l)."""
    row = x.flatten(-2)  # (..., l) row-major
    column = x.transpose(-2, -1).flatten(-2)  # (..., l) column-major
    return torch.stack([row, column], dim=-2)  # (..., 2, l)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Unfold a feature map into the four route sequences.

    x (b, d, h, w) -> xs (b, k=4, d, l=h*w), equal to `vmamba_ref.cross_scan(x)`.
    """
    check_grid("cross_scan", "x", x)
    forward = _forward_routes(x).transpose(1, 2)  # (b, d, 2, l) -> (b, 2, d, l)
    return torch.cat([forward, forward.flip(-1)], dim=1)  # (b, 4, d, l)


def cross_scan_routes(xk: torch.Tensor) -> torch.Tensor:
    """Read each route's own map along that route: (b, k=4, d, h, w) -> (b, k, d, l).

    Equal to `vmamba_ref.cross_scan_routes(xk)`.
    """
    check_grid("cross_scan_routes", "xk", xk, routes=ROUTES)
    row = xk[:, 0::2].flatten(-2)  # (b, 2, d, l): maps of routes 0 and 2, row-major
    column = xk[:, 1::2].transpose(-2, -1).flatten(-2)  # (b, 2, d, l): routes 1 and 3, column-major
    return torch.stack(
        [row[:, 0], column[:, 0], row[:, 1].flip(-1), column[:, 1].flip(-1)], dim=1
    )  # (b, 4, d, l)


def cross_merge(ys: torch.Tensor) -> torch.Tensor:
    """Fold the four route outputs back onto the grid and sum them (the adjoint of cross_scan).

    ys (b, k=4, d, h, w), route k's output at step t in ys.flatten(3)[:, k, :, t]
    -> y (b, d, h, w), equal to `vmamba_ref.cross_merge(ys)`.
    """
    check_tensor("cross_merge", "ys", ys)
    check_shape("cross_merge", "ys", ys, (None, ROUTES, None, None, None), "b k d h w")
    b, _, d, h, w = ys.shape
    flat = ys.flatten(-2)  # (b, 4, d, l)
    forward = flat[:, 0:2] + flat[:, 2:4].flip(-1)  # (b, 2, d, l): routes 2, 3 back onto 0, 1
    column = forward[:, 1].unflatten(-1, (w, h)).transpose(-2, -1)  # (b, d, w, h) -> (b, d, h, w)
    return forward[:, 0].unflatten(-1, (h, w)) + column  # (b, d, h, w)
