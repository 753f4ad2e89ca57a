"""The selective scan as a parallel (odd-even) scan in plain PyTorch: exportable and safe.

Mamba (Gu & Dao 2023) section 3.2; VMamba section 3.2. The recurrence of `vmamba_ref`,

    h_t = dA_t * h_{t-1} + dBu_t,     dA_t = exp(dt_t A),  dBu_t = dt_t B_t u_t,
    y_t = sum_n C_t[n] h_t[n] + D u_t,

is a first-order linear recurrence, and the map h -> a h + b composes associatively:
applying (a1, b1) then (a2, b2) is (a2 a1, a2 b1 + b2). `linear_recurrence` uses that to solve
all l steps in log2(l) levels of whole-tensor operations (the odd-even reduction of Ladner and
Fischer / Blelloch, written recursively):

    1. pair up steps 2i and 2i+1:  (a_{2i+1} a_{2i},  a_{2i+1} b_{2i} + b_{2i+1})
    2. solve the half-length recurrence of the pairs: it gives h at every odd step
    3. fill in the even steps:     h_{2i} = a_{2i} h_{2i-1} + b_{2i}

The work is about 3 multiply-adds per element and level-halving, so O(l) in total, against
O(l log l) for a Hillis-Steele scan. The decays a = exp(dt A) are carried as their exponents
dt A, so composing steps adds exponents (exact to rounding however close a is to 1) and each
decay is exponentiated where it is applied; only decays in (0, 1] multiply, and nothing is ever
divided: at any step size the products can only underflow
towards 0, which is the true value, so no NaN appears where the loop has none (unlike the
chunked closed form h_t = e^{S_t} sum_s e^{-S_s} dBu_s, whose e^{-S_s} overflows). The gradient
is what autograd derives from these same products and sums.

Each level is made of slicing, padding, stacking and elementwise arithmetic on static shapes,
so `torch.compile`, `torch.export` and the ONNX exporter trace it without custom ops; the
recursion unrolls into about 2 log2(l) levels at trace time (25 for l = 3136).

Layouts and the dtype rule are `vmamba_ref.selective_scan`'s: u, delta (b, k*d, l); A (k*d, n);
B, C (b, k, n, l); D, delta_bias (k*d,); float32 computation and output for float16, bfloat16
and float32 inputs, float64 for float64.

Official implementation: `selective_scan_torch` in VMamba's `csms6s.py` (a loop over l).
Deviation: the loop is replaced by the parallel scan above, which sums in a different order, so
results agree with the loop to rounding (tested, forward and gradients, at extreme step sizes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vmamba_ref.contract import (
    compute_dtype,
    scan_any_layout,
)


def linear_recurrence(log_decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """Solve h_t = exp(log_decay_t) h_{t-1} + drive_t with h_{-1} = 0 along the last axis, in
    parallel.

    log_decay, drive (..., l) -> states h (..., l). Odd-even reduction: each even step is
    composed with the odd step after it, the half-length recurrence of the pairs is solved
    recursively, and the even steps are filled in from the odd ones before them. The decays are
    carried as their logarithms (dt * A, which the scan has before any exp), so composing two
    steps adds exponents instead of multiplying decays: a decay near 1 keeps 1 - decay to full
    precision at every level, and the error does not grow with log2(l).
    """
    l = log_decay.shape[-1]
    if l == 1:  # h_0 = decay_0 h_{-1} + drive_0 with h_{-1} = 0, written out as the loop computes it,
        return torch.exp(log_decay) * 0.0 + drive  # so log_decay_0 gets its (zero) gradient: DDP and AdamW see every parameter
    odd_length = l % 2 == 1
    if odd_length:  # prepend the identity step (decay, drive) = (1, 0): it maps h_{-1} = 0 to 0
        log_decay = F.pad(log_decay, (1, 0), value=0.0)  # (..., l + 1)
        drive = F.pad(drive, (1, 0), value=0.0)  # (..., l + 1)
    log_even, log_odd = log_decay[..., 0::2], log_decay[..., 1::2]  # (..., m) each, m = ceil(l / 2)
    drive_even, drive_odd = drive[..., 0::2], drive[..., 1::2]  # (..., m) each
    # Step 2i+1 after step 2i: (decay_{2i+1} decay_{2i}, decay_{2i+1} drive_{2i} + drive_{2i+1}).
    states_odd = linear_recurrence(log_odd + log_even, torch.exp(log_odd) * drive_even + drive_odd)  # (..., m): h_{2i+1}
    states_before_even = F.pad(states_odd[..., :-1], (1, 0))  # (..., m): h_{2i-1}, with h_{-1} = 0
    states_even = torch.exp(log_even) * states_before_even + drive_even  # (..., m): h_{2i}
    states = torch.stack([states_even, states_odd], dim=-1).flatten(-2)  # (..., 2m) interleaved
    return states[..., 1:] if odd_length else states  # (..., l)


def _grouped_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The parallel scan on the grouped layout, B, C (b, k, n, l), u not empty; `selective_scan`
    has checked the call."""
    b, kd, l = u.shape
    k = B.shape[1]
    d = kd // k
    dtype = compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    D = None if D is None else D.to(dtype)
    delta_bias = None if delta_bias is None else delta_bias.to(dtype)

    if delta_bias is not None:
        delta = delta + delta_bias[:, None]  # (b, k*d, l)
    dt = F.softplus(delta) if delta_softplus else delta  # (b, k*d, l)
    dtA = torch.einsum("bkdl,kdn->bkdnl", dt.unflatten(1, (k, d)), A.unflatten(0, (k, d)))
    dtA = dtA.flatten(1, 2)  # (b, k, d, n, l) -> (b, k*d, n, l): log dA
    # Each route's B and C serve all d channels of that route.
    dtu = (dt * u).unflatten(1, (k, d))  # (b, k, d, l)
    dBu = torch.einsum("bkdl,bknl->bkdnl", dtu, B).flatten(1, 2)  # (b, k*d, n, l)
    if initial_state is not None:  # fold h_{-1} into the first step: dBu_0 += dA_0 h_{-1}
        first = dBu[..., :1] + torch.exp(dtA[..., :1]) * initial_state.to(dtype)[..., None]  # (b, k*d, n, 1)
        dBu = torch.cat([first, dBu[..., 1:]], dim=-1)  # (b, k*d, n, l)
    states = linear_recurrence(dtA, dBu)  # (b, k*d, n, l): h_t at every step
    y = torch.einsum("bkdnl,bknl->bkdl", states.unflatten(1, (k, d)), C).flatten(1, 2)  # (b, k*d, l)
    if D is not None:
        y = y + D[:, None] * u  # (b, k*d, l)
    return (y, states[..., -1]) if return_last_state else y


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    z: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the selective scan over every channel of every route as one parallel scan.

    Args:
        u: input sequences (b, k*d, l).
        delta: step-size logits (b, k*d, l), same dtype as u.
        A: state matrix diagonal (k*d, n), real and normally negative.
        B, C: input and output projections: grouped (b, k, n, l), one per route, or mamba_ssm's
            constant (k*d, n) or variable (b, n, l), mapped onto grouped by the contract.
        D: skip weights (k*d,) or None.
        delta_bias: added to delta before softplus (k*d,) or None.
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: h_{-1} (b, k*d, n) or None for zeros.
        return_last_state: also return h_{l-1} (b, k*d, n).
        z: the gate (b, k*d, l) or None: the output is then y * silu(z), as in mamba_ssm.

    Returns:
        y (b, k*d, l) in float32 (float64 for float64 u); with `return_last_state`, (y, h_last).
        An empty u gives the contract's `empty_scan` result.
    """
    return scan_any_layout(
        _grouped_scan, u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state,
        return_last_state, z,
    )  # fmt: skip
