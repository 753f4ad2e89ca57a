"""Cross-scan and cross-merge on the CPU: Numba kernels for SS2D's four routes (paper section 3.3).

Same functions, signatures and route orders as `vmamba_ref.cross_scan`:

| k | route                  | xs[:, k, :, t] reads grid position               |
|---|------------------------|--------------------------------------------------|
| 0 | row-major              | t                                                |
| 1 | column-major           | (t mod h)*w + t div h                            |
| 2 | row-major, reversed    | l-1-t                                            |
| 3 | column-major, reversed | route 1's position at l-1-t                      |

cross_merge is the adjoint of cross_scan: it adds every route's outputs back onto the grid, in
the reference's order (route 0, 1, 2, 3), so float32 and float64 results equal the reference's
bit for bit.

Kernel design: the prange runs over (batch, channel) planes; each plane is copied along its
four routes (cross_scan) or gathered from them (cross_merge). cross_scan is a pure permutation,
so it moves the bits of any dtype through an integer view of the same width (this covers
bfloat16, which Numba lacks); cross_merge adds, in float32 for float16/bfloat16 input, and
rounds once at the end.

Official implementation: `CrossScanF` / `CrossMergeF` in VMamba's `csm_triton.py`.
"""

from __future__ import annotations

import torch
from numba import njit, prange

from vmamba_fast import ops
from vmamba_fast.numba.config import PARALLEL_JIT, launch, threads_for
from vmamba_fast.numba.memory import as_kernel_array, check_cpu, reaches_cpu_kernel
from vmamba_ref.contract import (
    ROUTES,
    check_grid,
    check_shape,
    check_tensor,
    compute_dtype,
    route_positions,
)

_SAME_WIDTH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@njit(**PARALLEL_JIT)
def _cross_scan_kernel(x, xs):
    """x (b, d, h, w) C-contiguous -> xs (b, k=4, d, l) C-contiguous, any dtype.

    prange over the b*d planes; per plane: route 0 copies, route 2 copies backwards, route 1
    transposes the (h, w) plane into (w, h), route 3 copies route 1 backwards.
    """
    b, d, h, w = x.shape
    l = h * w
    for item in prange(b * d):
        bi = item // d
        ch = item % d
        plane = x[bi, ch]  # (h, w)
        o0, o1, o2, o3 = xs[bi, 0, ch], xs[bi, 1, ch], xs[bi, 2, ch], xs[bi, 3, ch]  # (l,) each
        for i in range(h):
            row = plane[i]
            for j in range(w):
                o0[i * w + j] = row[j]
                o1[j * h + i] = row[j]
        for t in range(l):
            o2[t] = o0[l - 1 - t]
        for t in range(l):
            o3[t] = o1[l - 1 - t]


@njit(**PARALLEL_JIT)
def _cross_merge_kernel(ys, h, w, y):
    """ys (b, k=4, d, l) -> y (b, d, l), both C-contiguous float32 or float64, l = h*w.

    prange over the b*d planes; for grid position p = i*w + j, whose column-major step is
    q = j*h + i: y[p] = ((ys0[p] + ys1[q]) + ys2[l-1-p]) + ys3[l-1-q], the reference's order.
    """
    b, k, d, l = ys.shape
    for item in prange(b * d):
        bi = item // d
        ch = item % d
        out = y[bi, ch]  # (l,)
        r0, r1, r2, r3 = ys[bi, 0, ch], ys[bi, 1, ch], ys[bi, 2, ch], ys[bi, 3, ch]  # (l,) each
        for i in range(h):
            for j in range(w):
                v = r0[i * w + j] + r1[j * h + i]
                v += r2[l - 1 - i * w - j]
                out[i * w + j] = v + r3[l - 1 - j * h - i]


def _check_scan(x: object) -> None:
    """The validation of a cross_scan call, in the reference's words: the device, then a
    (b, d, h, w) float tensor with a non-empty grid."""
    check_cpu("cross_scan", x=x)
    check_grid("cross_scan", "x", x)
    if x.shape[2] < 1 or x.shape[3] < 1:
        route_positions(x.shape[2], x.shape[3])  # raises the reference's error for an empty grid


def _check_merge(ys: object) -> None:
    """The validation of a cross_merge call, in the reference's words: the device, then a
    (b, 4, d, h, w) float tensor with a non-empty grid."""
    check_cpu("cross_merge", ys=ys)
    check_tensor("cross_merge", "ys", ys)
    check_shape("cross_merge", "ys", ys, (None, ROUTES, None, None, None), "b k d h w")
    if ys.shape[3] < 1 or ys.shape[4] < 1:
        route_positions(ys.shape[3], ys.shape[4])  # raises the reference's error


def cross_scan_cpu(x: torch.Tensor) -> torch.Tensor:
    """The CPU kernel of `vmamba::cross_scan`: x (b, d, h, w) -> xs (b, 4, d, h*w), x's dtype.
    Validates its argument: the one check of every call."""
    _check_scan(x)
    b, d, h, w = x.shape
    xs = torch.empty(b, ROUTES, d, h * w, dtype=x.dtype)  # (b, k, d, l)
    bits = _SAME_WIDTH_INT[x.element_size()]
    with threads_for(x.numel()):
        launch(_cross_scan_kernel)(x.detach().contiguous().view(bits).numpy(), xs.view(bits).numpy())
    return xs


def cross_merge_cpu(ys: torch.Tensor) -> torch.Tensor:
    """The CPU kernel of `vmamba::cross_merge`: ys (b, 4, d, h, w) -> y (b, d, h, w), ys's
    dtype. Validates its argument: the one check of every call."""
    _check_merge(ys)
    b, _, d, h, w = ys.shape
    dtype = compute_dtype(ys.dtype)  # summing four routes: float32 at least
    y = torch.empty(b, d, h, w, dtype=dtype)  # (b, d, h, w)
    with threads_for(ys.numel()):
        launch(_cross_merge_kernel)(
            as_kernel_array(ys, dtype).reshape(b, ROUTES, d, h * w),
            h,
            w,
            y.numpy().reshape(b, d, h * w),
        )
    return y.to(ys.dtype)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """`vmamba_ref.cross_scan` on the Numba backend: x (b, d, h, w) -> xs (b, 4, d, h*w).
    Differentiable (its backward is cross_merge). The operator's CPU kernel validates x; a call
    that cannot reach it (x off the CPU or not a tensor) raises here, with the same checks."""
    if not torch.compiler.is_compiling() and not reaches_cpu_kernel((x,)):
        _check_scan(x)  # raises
    return ops.cross_scan(x)


def cross_merge(ys: torch.Tensor) -> torch.Tensor:
    """`vmamba_ref.cross_merge` on the Numba backend: ys (b, 4, d, h, w) -> y (b, d, h, w), the
    adjoint of cross_scan. Differentiable (its backward is cross_scan). The operator's CPU
    kernel validates ys; a call that cannot reach it (ys off the CPU or not a tensor) raises
    here, with the same checks."""
    if not torch.compiler.is_compiling() and not reaches_cpu_kernel((ys,)):
        _check_merge(ys)  # raises
    return ops.cross_merge(ys)
