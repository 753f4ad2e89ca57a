"""A regression zoo: one small kernel per class of bug that shipped in real selective-scan code.

`mutants.py` plants textbook mistakes (a dropped D, a swapped route). The kernels here reproduce
bugs that public scan kernels actually had, each built from the reference's pieces
(`vmamba_ref.selective_scan`) so that only the bug differs. The kit must catch every one;
tests/test_zoo.py runs it on each, under the derandomized `ci` profile, and records how many
Hypothesis examples it needed. docs/bugs.md tells the story of each.

| name              | bug class                                  | public report          |
|-------------------|--------------------------------------------|------------------------|
| padded_tail       | padding scanned with a nonzero step size   | state-spaces/mamba #368 |
| pscan_first_step  | parallel scan's backward drops step 0      | alxndrTL/mamba.py #65  |
| closed_form       | exp(cumsum(dt A)) and a division underflow | official chunked scans |
| cancelling_du     | du by differences of running sums          | hand-written backwards |
| unordered_dB      | dB, dC reduced in a varying order          | MzeroMiko/VMamba #257  |
| whole_blocks_only | the tail after the last full block dropped | odd sequence lengths   |

No code is copied from those projects: each kernel is written here from the bug's description.
Do not use these kernels for anything but testing a test harness.

Dimension letters as in `vmamba_ref.selective_scan`: b batch, k routes (groups of B and C),
d channels per route, l steps, n state size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vmamba_ref.contract import compute_dtype
from vmamba_ref.selective_scan import discretize_A, selective_scan, step_size

PAD_CHUNK = 16  # padded_tail: l is padded up to a multiple of this
CLOSED_FORM_CHUNK = 64  # closed_form: steps per chunk of the closed-form scan
LENGTH_BLOCK = 8  # whole_blocks_only: steps per block


@dataclass(frozen=True)
class RegressionBug:
    """A kernel reproducing one bug class that shipped in real scan kernels."""

    name: str
    source: str  # where the bug class was reported
    kernel: Callable[..., Any]  # with the signature of vmamba_ref.selective_scan
    bug: str  # what is wrong, in words
    symptom: str  # a phrase the kit's report contains when it catches the bug
    deterministic: bool = False  # whether the check must run fn twice to see it
    op: str = "selective_scan"


def _dt(
    u: torch.Tensor, delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool
) -> torch.Tensor:
    """The step size dt = softplus(delta + delta_bias) in the scan's compute dtype."""
    dtype = compute_dtype(u.dtype)
    bias = None if delta_bias is None else delta_bias.to(dtype)
    return step_size(delta.to(dtype), bias, delta_softplus)  # (b, k*d, l)


def _per_channel(M: torch.Tensor, channels: int) -> torch.Tensor:
    """Grouped B or C (b, k, n, l) repeated to one group per channel, (b, k*d, n, l)."""
    return M.repeat_interleave(channels // M.shape[1], dim=1)


# ---------------------------------------------------------------- (a) padded tail, mamba #368


def selective_scan_padded_tail(
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
    """Pads l up to a multiple of PAD_CHUNK with zeros and scans the padding too.

    Zero u and B make a padded step add nothing to the state, which is why the padding looks
    harmless; but its step size is softplus(0 + delta_bias) > 0, not 0, so each padded step
    still multiplies the state by exp(dt A) < 1. y over the real steps is right; the last state
    has decayed, and so are the gradients that flow back from it.
    """
    l = u.shape[-1]
    pad = -l % PAD_CHUNK
    u, delta, B, C = (F.pad(t, (0, pad)) for t in (u, delta, B, C))  # (..., l + pad)
    y, last = selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, True)
    y = y[..., :l]  # (b, k*d, l)
    return (y, last) if return_last_state else y


# ----------------------------------------------------- (b) parallel scan's gradient, mamba.py #65


def selective_scan_pscan_first_step(
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
    """A scan split, as parallel scans are, into the part driven by the inputs and the part
    carried from the initial state h_init; the backward of the second drops the first step.

    y = scan(inputs, from 0) + C_t exp(A (dt_1 + ... + dt_t)) [exp(dt_0 A) h_init]: exact in
    the forward pass. The first step's decay exp(dt_0 A) is taken as a constant (a parallel
    scan's backward that starts its reverse sweep at step 1), so the gradients of delta,
    delta_bias and A miss the term h_init * exp(dt_0 A) carries. Without an initial state that
    term is zero, and the kernel is right.
    """
    dt = _dt(u, delta, delta_bias, delta_softplus)  # (b, k*d, l)
    y, last = selective_scan(u, dt, A, B, C, D, None, False, None, True)
    if initial_state is not None:
        first = discretize_A(dt[..., 0], A.to(dt.dtype)).detach()  # (b, k*d, n), bug: detached
        h = first * initial_state.to(dt.dtype)  # (b, k*d, n), the state after step 0
        rest = torch.cat([torch.zeros_like(dt[..., :1]), dt[..., 1:]], dim=-1)  # (b, k*d, l)
        y_h, last_h = selective_scan(torch.zeros_like(u), rest, A, B, C, None, None, False, h, True)
        y, last = y + y_h, last + last_h
    return (y, last) if return_last_state else y


# ----------------------------------------------------- (c) closed form with exp(cumsum) and 1 / x


def selective_scan_closed_form(
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
    """The chunked closed form h_t = P_t (h_0 + sum_{s<=t} dt_s B_s u_s / P_s), with
    P_t = exp(A (dt_1 + ... + dt_t)) within a chunk of CLOSED_FORM_CHUNK steps.

    Exact in real arithmetic; in floating point P_t underflows once A * cumsum(dt) is below
    about -87 in float32 (1 / P_t is then inf, and inf * 0 is NaN), and the division's backward,
    -x / P_t^2, is inf once it is below about -44. VMamba's init (A = -1 .. -n, dt up to 0.1)
    gets there with n = 16 within one chunk of 64 steps; the kit's extreme step sizes at once.
    """
    dt = _dt(u, delta, delta_bias, delta_softplus)  # (b, k*d, l)
    dtype = dt.dtype
    b, kd, l = u.shape
    A = A.to(dtype)
    B, C = _per_channel(B.to(dtype), kd), _per_channel(C.to(dtype), kd)  # (b, k*d, n, l)
    x = dt[:, :, None] * B * u.to(dtype)[:, :, None]  # (b, k*d, n, l), dt_s B_s u_s
    h = u.new_zeros(b, kd, A.shape[1], dtype=dtype) if initial_state is None else initial_state
    h = h.to(dtype)  # (b, k*d, n)
    ys = []
    for start in range(0, l, CLOSED_FORM_CHUNK):
        steps = slice(start, start + CLOSED_FORM_CHUNK)
        P = torch.exp(torch.cumsum(dt[:, :, None, steps] * A[:, :, None], dim=-1))  # (b, k*d, n, c)
        states = P * (h[..., None] + torch.cumsum(x[..., steps] / P, dim=-1))  # (b, k*d, n, c)
        ys.append(torch.einsum("bdnc,bdnc->bdc", states, C[..., steps]))  # (b, k*d, c)
        h = states[..., -1]  # (b, k*d, n)
    y = torch.cat(ys, dim=-1)  # (b, k*d, l)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u.to(dtype)
    return (y, h) if return_last_state else y


# ----------------------------------------------------- the reference forward, a hand-written backward


def _reference_backward(saved, delta_softplus, grad_y, grad_last):
    """Gradients of every saved input of the reference scan (None where the input is None),
    and the per-channel B and C used for them."""
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in saved]
        u, delta, A, B, C, D, delta_bias, initial_state = leaves
        y, last = selective_scan(
            u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, True
        )
        used = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad((y, last), used, (grad_y, grad_last), allow_unused=True))
    return [None if t is None else next(grads) for t in leaves]


def _du_by_differences(saved, delta_softplus, grad_y, grad_last) -> torch.Tensor:
    """du_t = D grad_y_t + dt_t sum_n B_t g_t, with the adjoint state g_t = sum_{s>=t}
    exp(A (S_s - S_t)) C_s grad_y_s (plus the last state's gradient at s = l - 1),
    S = cumsum(dt), written as exp(-A S_t) (total - sum_{s<t} w_s), w_s = exp(A S_s) C_s grad_y_s.

    Exact in real arithmetic. But w decays along l, so at the last steps the difference of two
    nearly equal sums cancels: in float32 it is 0 once w_t is below half an ulp of the total,
    and du at the last step loses its scan term.
    """
    u, delta, A, B, C, D, delta_bias, _ = saved
    dt = _dt(u, delta, delta_bias, delta_softplus)  # (b, k*d, l)
    kd = u.shape[1]
    A = A.to(dt.dtype)
    B, C = _per_channel(B.to(dt.dtype), kd), _per_channel(C.to(dt.dtype), kd)  # (b, k*d, n, l)
    S = torch.cumsum(dt, dim=-1)[:, :, None] * A[:, :, None]  # (b, k*d, n, l), A S_t
    g = C * grad_y.to(dt.dtype)[:, :, None]  # (b, k*d, n, l)
    g[..., -1] += grad_last.to(dt.dtype)
    w = torch.exp(S) * g  # (b, k*d, n, l)
    before = torch.cumsum(w, dim=-1) - w  # (b, k*d, n, l), sum_{s<t} w_s
    total = w.sum(dim=-1, keepdim=True)  # (b, k*d, n, 1)
    adjoint = torch.exp(-S) * (total - before)  # (b, k*d, n, l), bug: cancels at the end
    du = dt * torch.einsum("bdnl,bdnl->bdl", B, adjoint)  # (b, k*d, l)
    if D is not None:
        du = du + D.to(dt.dtype)[:, None] * grad_y.to(dt.dtype)
    return du.to(u.dtype)


_ORDER = itertools.count()  # unordered_dB: counts backward calls, whose parity is the order


def _unordered_group_sum(per_channel: torch.Tensor, groups: int, backwards: bool) -> torch.Tensor:
    """Sum (b, k*d, n, l) over each group's d channels, one channel at a time, forwards or
    backwards: the order in which atomic adds land varies between runs."""
    b, kd, n, l = per_channel.shape
    parts = per_channel.view(b, groups, kd // groups, n, l).unbind(2)  # d x (b, k, n, l)
    total = torch.zeros_like(parts[0])  # (b, k, n, l)
    for part in parts[::-1] if backwards else parts:
        total = total + part
    return total


class _ScanWithHandWrittenBackward(torch.autograd.Function):
    """The reference's forward and last state; the backward by autograd over the reference,
    then one gradient replaced by a hand-written one (`bug` names which)."""

    @staticmethod
    def forward(ctx, bug, delta_softplus, u, delta, A, B, C, D, delta_bias, initial_state):
        ctx.bug, ctx.delta_softplus = bug, delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, initial_state)
        return selective_scan(
            u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, return_last_state=True
        )

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        saved = ctx.saved_tensors
        grads = _reference_backward(saved, ctx.delta_softplus, grad_y, grad_last)
        if ctx.bug == "cancelling_du":
            grads[0] = _du_by_differences(saved, ctx.delta_softplus, grad_y, grad_last)
        elif ctx.bug == "unordered_dB":
            u, delta, A, B, C, D, delta_bias, initial_state = saved
            kd, k = u.shape[1], B.shape[1]
            wide = [_per_channel(M, kd) for M in (B, C)]  # (b, k*d, n, l) each, one per channel
            per_channel = _reference_backward(
                (u, delta, A, *wide, D, delta_bias, initial_state),
                ctx.delta_softplus,
                grad_y,
                grad_last,
            )
            backwards = bool(next(_ORDER) % 2)  # this call's order: the next call's differs
            grads[3] = _unordered_group_sum(per_channel[3], k, backwards).to(B.dtype)
            grads[4] = _unordered_group_sum(per_channel[4], k, backwards).to(C.dtype)
        return None, None, *grads


def _hand_written(bug: str) -> Callable[..., Any]:
    def kernel(
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
        y, last = _ScanWithHandWrittenBackward.apply(
            bug, delta_softplus, u, delta, A, B, C, D, delta_bias, initial_state
        )
        return (y, last) if return_last_state else y

    kernel.__name__ = kernel.__qualname__ = f"selective_scan_{bug}"
    kernel.__doc__ = f"The reference's forward; its backward has the bug `{bug}` (see zoo.py)."
    return kernel


selective_scan_cancelling_du = _hand_written("cancelling_du")
selective_scan_unordered_dB = _hand_written("unordered_dB")


# ---------------------------------------------------------------- (f) whole blocks only


def selective_scan_whole_blocks_only(
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
    """Scans l in blocks of LENGTH_BLOCK steps, carrying the state, with a launch grid of
    l // LENGTH_BLOCK blocks: a floor where a ceiling division belongs. Right when l is a
    multiple of the block; otherwise the tail is never computed (its output is whatever the
    buffer held) and the last state is that of the last full block."""
    b, kd, l = u.shape
    dtype = compute_dtype(u.dtype)
    y = torch.empty(b, kd, l, dtype=dtype, device=u.device)  # (b, k*d, l)
    state = initial_state
    if state is None:
        state = torch.zeros(b, kd, A.shape[1], dtype=dtype, device=u.device)  # (b, k*d, n)
    for i in range(l // LENGTH_BLOCK):  # bug: should be ceil(l / LENGTH_BLOCK)
        steps = slice(i * LENGTH_BLOCK, (i + 1) * LENGTH_BLOCK)
        y[..., steps], state = selective_scan(
            u[..., steps],
            delta[..., steps],
            A,
            B[..., steps],
            C[..., steps],
            D,
            delta_bias,
            delta_softplus,
            state,
            True,
        )
    return (y, state.to(dtype)) if return_last_state else y


ZOO: tuple[RegressionBug, ...] = (
    RegressionBug(
        "padded_tail",
        "state-spaces/mamba #368",
        selective_scan_padded_tail,
        "l padded to a multiple of 16 and the padding scanned: softplus(0 + delta_bias) > 0 "
        "decays the last state",
        "output(s) [1] do not",
    ),
    RegressionBug(
        "pscan_first_step",
        "alxndrTL/mamba.py #65",
        selective_scan_pscan_first_step,
        "a parallel scan whose backward drops the first step's decay of the initial state",
        "the backward is wrong for",
    ),
    RegressionBug(
        "closed_form",
        "official chunked closed-form scans (exp(cumsum(dt A)) and a division)",
        selective_scan_closed_form,
        "exp(A cumsum(dt)) underflows: inf gradients below about -44, NaN outputs below -87",
        "non-finite mismatch",
    ),
    RegressionBug(
        "cancelling_du",
        "hand-written backward kernels",
        selective_scan_cancelling_du,
        "du from a difference of running sums, which cancels to 0 at the last steps in float32",
        "the backward is wrong for `u`",
    ),
    RegressionBug(
        "unordered_dB",
        "MzeroMiko/VMamba #257",
        selective_scan_unordered_dB,
        "dB and dC summed over each group's channels in an order that changes between calls",
        "not deterministic",
        deterministic=True,
    ),
    RegressionBug(
        "whole_blocks_only",
        "odd sequence lengths",
        selective_scan_whole_blocks_only,
        "l // 8 blocks launched where ceil(l / 8) belong: the tail is never computed",
        "never written",
    ),
)
