"""The selective scan (S6): Mamba's input-dependent state-space recurrence, one step at a time.

Mamba (Gu & Dao 2023) section 3.2, algorithm 2; VMamba section 3.2. The continuous system

    h'(t) = A h(t) + B(t) x(t),        y(t) = C(t) h(t) + D x(t)

is discretized with a step size dt that depends on the input:

    dt_t  = softplus(delta_t + delta_bias)                (step size)
    dA_t  = exp(dt_t * A)                                 (zero-order hold for A)
    dBu_t = dt_t * B_t * u_t                              (Euler for B: ZOH simplified)
    h_t   = dA_t * h_{t-1} + dBu_t,     h_{-1} = 0 or the given initial state
    y_t   = sum_n C_t[n] h_t[n] + D * u_t                 (readout with skip)

Layouts are VMamba's: u, delta (b, k*d, l); A (k*d, n); B, C (b, k, n, l), one B and one C per
route, shared by that route's d channels; D, delta_bias (k*d,). Channel c belongs to route
c // d. B and C may also take mamba_ssm's other layouts (`PROJECTION_LAYOUTS` in the contract):
constant (k*d, n), one per channel and the same at every step, or variable (b, n, l), one per
step shared by every channel; `projection_at` reads each channel's B_t from whichever it is.

The gate (Mamba section 3.4, mamba_ssm's `selective_scan_fn(..., z)`): with z (b, k*d, l) the
output is `out * silu(z)`, applied after the loop. VMamba's own blocks gate outside the scan.

Dtype rule: the recurrence runs in float64 when `u` is float64 and in float32 otherwise; the
output has that computation dtype (float32 for float16/bfloat16/float32 inputs, as VMamba's
"oflex" kernels return), and so has the last state.

Official implementation: `selective_scan_torch` in VMamba's `csms6s.py` and
`selective_scan_ref` in Mamba's `selective_scan_interface.py`. Deviations: each step is a named
function; the gate `z` comes last in the signature (VMamba's argument order first); an initial
state can be passed in, so that a scan split in two with the carried state equals one scan; an
empty input (b, k*d or l = 0) has the contract's `empty_scan` result; complex A raises.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from vmamba_ref.contract import (
    PROJECTION_LAYOUTS,
    check_selective_scan_args,
    compute_dtype,
    empty_scan,
    gate,
)


def step_size(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """dt = softplus(delta + delta_bias), or delta + delta_bias without softplus. (b, k*d, l)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]  # (b, k*d, l)
    return F.softplus(delta) if delta_softplus else delta  # (b, k*d, l)


def discretize_A(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Zero-order hold: dA = exp(dt * A). dt (b, k*d), A (k*d, n) -> (b, k*d, n)."""
    return torch.exp(dt[:, :, None] * A)  # (b, k*d, 1) * (k*d, n) -> (b, k*d, n)


def discretize_B(dt: torch.Tensor, B: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Euler step for the input: dBu = dt * B * u. dt, u (b, k*d); B (b, k*d, n) -> (b, k*d, n)."""
    return dt[:, :, None] * B * u[:, :, None]  # (b, k*d, 1) * (b, k*d, n) * (b, k*d, 1) -> (b, k*d, n)


def recurrence_step(state: torch.Tensor, dA: torch.Tensor, dBu: torch.Tensor) -> torch.Tensor:
    """h_t = dA_t * h_{t-1} + dBu_t, with `state` = h_{t-1} (the paper's h; in code `h` is the
    grid height). All (b, k*d, n)."""
    return dA * state + dBu


def readout(state: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """y_t = sum_n C_t[n] h_t[n] + D u_t, with `state` = h_t. state, C (b, k*d, n); D (k*d,);
    u (b, k*d) -> (b, k*d)."""
    y = (C * state).sum(-1)  # (b, k*d, n) -> (b, k*d)
    return y if D is None else y + D * u


def projection_steps(X: torch.Tensor, layout: str, l: int) -> Iterable[torch.Tensor]:
    """B or C at each step, still in its layout: constant (k*d, n) is the same at every step;
    variable (b, n, l) gives (b, n) and grouped (b, k, n, l) gives (b, k, n)."""
    if layout == "constant":
        return itertools.repeat(X, l)
    # unbind() hands out one view per step; its backward is a single stack, not l full-size
    # zero tensors as indexing X[..., t] would give.
    return X.unbind(-1)


def projection_at(X_t: torch.Tensor, layout: str, b: int, kd: int) -> torch.Tensor:
    """Each channel's B_t (or C_t), (b, k*d, n), from step t of B in `layout`: constant B[c];
    variable B[:, :, t], shared by every channel; grouped B[:, c // d, :, t], channel c reading
    group c // d of the k groups of d channels."""
    if layout == "constant":  # X_t = B (k*d, n)
        return X_t.expand(b, kd, -1)  # (k*d, n) -> (b, k*d, n)
    if layout == "variable":  # X_t = B[:, :, t] (b, n)
        return X_t[:, None].expand(b, kd, -1)  # (b, 1, n) -> (b, k*d, n)
    k = X_t.shape[1]  # X_t = B[..., t] (b, k, n)
    return X_t.repeat_interleave(kd // k, dim=1)  # (b, k, n) -> (b, k*d, n)


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
    """Run the selective scan over every channel of every route, a visible loop over time.

    Args:
        u: input sequences (b, k*d, l).
        delta: step-size logits (b, k*d, l), same dtype as u.
        A: state matrix diagonal (k*d, n), real and normally negative.
        B, C: input and output projections: VMamba's grouped (b, k, n, l), one per route; or
            mamba_ssm's constant (k*d, n) or variable (b, n, l). Each may take its own layout.
        D: skip weights (k*d,) or None.
        delta_bias: added to delta before softplus (k*d,) or None.
        delta_softplus: apply softplus to delta + delta_bias.
        initial_state: h_{-1} (b, k*d, n) or None for zeros.
        return_last_state: also return h_{l-1} (b, k*d, n).
        z: the gate (b, k*d, l) or None: the output is then y * silu(z), as in mamba_ssm.

    Returns:
        y (b, k*d, l) in float32 (float64 for float64 u); with `return_last_state`, (y, h_last).
        An empty u (b, k*d or l = 0) gives an empty y and h_last = initial_state (or zeros).
    """
    b, _, _, l, n = check_selective_scan_args(
        "selective_scan", u, delta, A, B, C, D, delta_bias, initial_state, z,
        layouts=PROJECTION_LAYOUTS,
    )  # fmt: skip
    layout_B, layout_C = (PROJECTION_LAYOUTS[t.dim() - 2] for t in (B, C))
    kd = u.shape[1]
    if u.numel() == 0:  # nothing to scan: the contract's empty result
        y, state = empty_scan(u, n, initial_state)  # (b, k*d, l), (b, k*d, n)
        y = y if z is None else gate(y, z)
        return (y, state) if return_last_state else y
    dtype = compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    D = None if D is None else D.to(dtype)
    delta_bias = None if delta_bias is None else delta_bias.to(dtype)

    dt = step_size(delta, delta_bias, delta_softplus)  # (b, k*d, l)
    state = u.new_zeros(b, kd, n) if initial_state is None else initial_state.to(dtype)  # (b, k*d, n)
    steps = zip(
        u.unbind(-1), dt.unbind(-1), projection_steps(B, layout_B, l), projection_steps(C, layout_C, l),
        strict=True,
    )  # fmt: skip
    ys = []
    for u_t, dt_t, B_t, C_t in steps:  # for t in range(l)
        B_t = projection_at(B_t, layout_B, b, kd)  # (b, k*d, n)
        C_t = projection_at(C_t, layout_C, b, kd)  # (b, k*d, n)
        dA = discretize_A(dt_t, A)  # (b, k*d, n)
        dBu = discretize_B(dt_t, B_t, u_t)  # (b, k*d, n)
        state = recurrence_step(state, dA, dBu)  # (b, k*d, n)
        ys.append(readout(state, C_t, D, u_t))  # (b, k*d)
    y = torch.stack(ys, dim=-1)  # (b, k*d, l)
    if z is not None:  # mamba_ssm's gate: out * silu(z)
        y = gate(y, z)  # (b, k*d, l)
    return (y, state) if return_last_state else y
