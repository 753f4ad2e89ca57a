"""Cross-scan and cross-merge: how SS2D reads a 2-D feature map as four 1-D sequences.

Paper section 3.3 (SS2D), figure 2. A selective scan is causal along one axis, so VMamba
unfolds the grid along four routes and scans each one:

| k | route                        | step t of the route visits grid position (row-major) |
|---|------------------------------|-------------------------------------------------------|
| 0 | row-major                    | t                          -> (h, w) = divmod(t, W)   |
| 1 | column-major                 | (w, h) = divmod(t, H)                                 |
| 2 | row-major, reversed          | route 0 read backwards                                |
| 3 | column-major, reversed       | route 1 read backwards                                |

On a 2x3 grid whose values are their row-major positions the routes read
[0,1,2,3,4,5], [0,3,1,4,2,5], [5,4,3,2,1,0], [5,2,4,1,3,0].

Cross-merge writes every route's outputs back to the grid positions they came from and sums
them. It is the adjoint (transpose) of cross-scan: <scan(x), y> = <x, merge(y)>, so
merge(scan(x)) = 4x.

Official implementation: `CrossScanF` / `CrossMergeF` in VMamba's `csm_triton.py` (flips and
transposes). Deviation: here the route orders come from explicit index loops, computed once per
grid size, because that is the definition the reshapes implement.
"""

from __future__ import annotations

import torch

from vmamba_ref.contract import ROUTES, check_grid, check_shape, check_tensor, route_positions


def cross_scan_routes(xk: torch.Tensor) -> torch.Tensor:
    """Read a per-route map along its route: `xs[:, k, :, t] = xk[:, k, :, pos[k, t]]`.

    (b, k, d, h, w) -> (b, k, d, l). `cross_scan(x)` is this with the same map on every route;
    SS2D's fused core uses it for the per-route step sizes and projections.
    """
    check_grid("cross_scan_routes", "xk", xk, routes=ROUTES)
    b, k, d, h, w = xk.shape
    pos = route_positions(h, w, xk.device)  # (k, l)
    flat = xk.reshape(b, k, d, h * w)  # (b, k, d, l) in row-major order
    index = pos[None, :, None, :].expand(b, k, d, h * w)  # (b, k, d, l)
    return torch.gather(flat, 3, index)  # (b, k, d, l) in each route's order


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Unfold a feature map into the four route sequences.

    x (b, d, h, w) -> xs (b, k=4, d, l=h*w), with xs[:, k, :, t] = x.flatten(2)[:, :, pos[k, t]].
    """
    check_grid("cross_scan", "x", x)
    b, d, h, w = x.shape
    return cross_scan_routes(x[:, None].expand(b, ROUTES, d, h, w))  # (b, k, d, l)


def cross_merge(ys: torch.Tensor) -> torch.Tensor:
    """Fold the four route outputs back onto the grid and sum them (the adjoint of cross_scan).

    ys (b, k=4, d, h, w), holding route k's output at step t in ys.flatten(3)[:, k, :, t]
    -> y (b, d, h, w), with y.flatten(2)[:, :, p] = sum over (k, t) with pos[k, t] = p.
    """
    check_tensor("cross_merge", "ys", ys)
    check_shape("cross_merge", "ys", ys, (None, ROUTES, None, None, None), "b k d h w")
    b, k, d, h, w = ys.shape
    pos = route_positions(h, w, ys.device)  # (k, l)
    y = ys.new_zeros(b, d, h * w)  # (b, d, l) row-major
    for route in range(k):
        y.index_add_(2, pos[route], ys[:, route].reshape(b, d, h * w))  # (b, d, l)
    return y.view(b, d, h, w)
