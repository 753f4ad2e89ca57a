"""Kernels with one planted bug each, to show (and test) that the kit catches real mistakes.

Mutation testing: a check that passes the reference proves little until it also fails on
kernels that are subtly wrong. Each mutant here is the reference with one bug of a kind that
fast kernels really have, and `symptom` is a phrase the kit's report must contain, so a test can
assert that the report names the bug, not just that something failed.

| name               | op             | bug                                                          |
|--------------------|----------------|--------------------------------------------------------------|
| wrong_route_order  | cross_scan     | routes stacked as row, row reversed, column, column reversed |
| unwritten_element  | cross_merge    | blockwise write-back whose ceil-division drops a tail of 1   |
| missing_D_skip     | selective_scan | the skip term D * u is dropped                               |
| softplus_twice     | selective_scan | softplus applied to the step size, then again by the scan    |
| wrong_grad_A       | selective_scan | custom backward returns dA_log (grad_A * A) as grad_A        |
| ignores_strides    | ss2d_core      | reads B as if it were contiguous                             |

Do not use these kernels for anything but testing a test harness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vmamba_ref.cross_scan import cross_merge
from vmamba_ref.selective_scan import selective_scan
from vmamba_ref.ss2d_core import ss2d_core

WRITE_BLOCK = 16  # elements per block of the unwritten_element mutant's write-back


@dataclass(frozen=True)
class Mutant:
    """A kernel with one planted bug."""

    name: str
    op: str  # the reference it imitates
    kernel: Callable[..., Any]
    bug: str  # what is wrong, in words
    symptom: str  # a phrase the kit's report contains when it catches the bug
    check_grad: bool  # whether the bug shows only in gradients


def cross_scan_wrong_route_order(x: torch.Tensor) -> torch.Tensor:
    """Cross-scan that stacks the routes as (row, row reversed, column, column reversed)."""
    b, d, h, w = x.shape
    row = x.reshape(b, d, h * w)  # (b, d, l) row-major
    col = x.transpose(2, 3).reshape(b, d, h * w)  # (b, d, l) column-major
    return torch.stack([row, row.flip(-1), col, col.flip(-1)], dim=1)  # (b, k, d, l), bug: 0,2,1,3


def cross_merge_unwritten_element(ys: torch.Tensor) -> torch.Tensor:
    """Cross-merge that copies its result out in blocks, counting the blocks with a ceiling
    division that drops a remainder of exactly one element: that element is never written."""
    merged = cross_merge(ys)  # (b, d, h, w)
    out = torch.empty(merged.shape, dtype=merged.dtype, device=merged.device)  # (b, d, h, w)
    src, dst = merged.reshape(-1), out.view(-1)  # (b*d*h*w,)
    blocks = src.numel() // WRITE_BLOCK + (src.numel() % WRITE_BLOCK > 1)  # bug: should be > 0
    for i in range(blocks):
        dst[i * WRITE_BLOCK : (i + 1) * WRITE_BLOCK] = src[i * WRITE_BLOCK : (i + 1) * WRITE_BLOCK]
    return out


def selective_scan_missing_D(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus=True,
    initial_state=None,
    return_last_state=False,
):
    """Selective scan that drops the skip term D * u."""
    return selective_scan(
        u, delta, A, B, C, None, delta_bias, delta_softplus, initial_state, return_last_state
    )


def selective_scan_softplus_twice(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus=True,
    initial_state=None,
    return_last_state=False,
):
    """Selective scan that computes dt = softplus(delta + delta_bias) itself, then hands dt to a
    scan that applies softplus again."""
    if delta_softplus:
        if delta_bias is not None:
            delta = delta + delta_bias[:, None].to(delta.dtype)  # (b, k*d, l)
        delta, delta_bias = F.softplus(delta), None  # (b, k*d, l), bug: the flag stays on
    return selective_scan(
        u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, return_last_state
    )


class _ScanWithWrongGradA(torch.autograd.Function):
    """The reference's forward; a hand-written backward that applies the A_log chain rule
    (grad_A_log = grad_A * A) and returns the result as the gradient of A."""

    @staticmethod
    def forward(ctx, delta_softplus, u, delta, A, B, C, D, delta_bias, initial_state):
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, initial_state)
        return selective_scan(
            u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, return_last_state=True
        )

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_() for t in saved]
            y, last = selective_scan(*leaves[:6], leaves[6], ctx.delta_softplus, leaves[7], True)
            used = [t for t in leaves if t is not None]
            grads = iter(
                torch.autograd.grad((y, last), used, (grad_y, grad_last), allow_unused=True)
            )
        out = [None if t is None else next(grads) for t in leaves]
        u, delta, A, B, C, D, delta_bias, initial_state = out
        A = A * saved[2]  # bug: d loss / d A_log, not d loss / d A
        return None, u, delta, A, B, C, D, delta_bias, initial_state


def selective_scan_wrong_grad_A(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    delta_bias=None,
    delta_softplus=True,
    initial_state=None,
    return_last_state=False,
):
    """Selective scan with a custom autograd.Function whose backward is wrong for A only."""
    y, last = _ScanWithWrongGradA.apply(
        delta_softplus, u, delta, A, B, C, D, delta_bias, initial_state
    )
    return (y, last) if return_last_state else y


def ss2d_core_ignores_strides(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """SS2D core that reads B's memory as if B were contiguous."""
    dense = [1]
    for size in reversed(B.shape[1:]):
        dense.insert(0, dense[0] * size)  # row-major strides of (b, k, n, h, w)
    B = B.as_strided(B.shape, dense)  # bug: right only when B is contiguous
    return ss2d_core(x, delta, A, B, C, D, delta_bias, delta_softplus)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "wrong_route_order",
        "cross_scan",
        cross_scan_wrong_route_order,
        "routes in the order row, row reversed, column, column reversed",
        "wrong route order",
        check_grad=False,
    ),
    Mutant(
        "unwritten_element",
        "cross_merge",
        cross_merge_unwritten_element,
        "a ceiling division that drops a one-element tail of the write-back",
        "never written",
        check_grad=False,
    ),
    Mutant(
        "missing_D_skip",
        "selective_scan",
        selective_scan_missing_D,
        "the skip term D * u is dropped",
        "D * u is missing",
        check_grad=False,
    ),
    Mutant(
        "softplus_twice",
        "selective_scan",
        selective_scan_softplus_twice,
        "softplus applied to the step size twice",
        "softplus is applied twice",
        check_grad=False,
    ),
    Mutant(
        "wrong_grad_A",
        "selective_scan",
        selective_scan_wrong_grad_A,
        "a custom backward that returns grad_A * A as the gradient of A",
        "backward is wrong for `A`",
        check_grad=True,
    ),
    Mutant(
        "ignores_strides",
        "ss2d_core",
        ss2d_core_ignores_strides,
        "B read with contiguous strides whatever its layout",
        "mishandles the strides",
        check_grad=False,
    ),
)
