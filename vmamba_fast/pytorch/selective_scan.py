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
chunked closed form h_t = e^{S_t} sum_s e^{-S_s} dBu_s, whose e^{-S_s} overflows).

The gradient is not autograd's derivative of the odd-even levels: that one sums each decay's
gradient from several levels, and where an input is infinite those partial sums are +inf and
-inf, a NaN where the loop's gradient is +-inf. `scan_states` (an `autograd.Function`) instead
forms the loop's own products. Its backward runs the adjoint recurrence with the same parallel
scan, backwards in time,

    g_t = dL/dh_t + dA_{t+1} g_{t+1},     dL/ddBu_t = g_t,     dL/d(dt_t A) = g_t h_{t-1} dA_t,

and dBu_t = (dt_t B_t) u_t is formed as the loop forms it, so that no infinite dt_t or u_t is
factored out of a sum over n whose terms have both signs. NaN and infinity then reach every
gradient exactly where they reach the reference's (tests/test_nonfinite.py). The backward is one
more parallel scan, three flips and a few elementwise products: at VMamba-T stage 1 the
forward and backward cost about 4% more than autograd through the levels (docs/kernels.md).

Each level is made of slicing, padding, stacking and elementwise arithmetic on static shapes,
so `torch.compile`, `torch.export` and the ONNX exporter trace it without custom ops (the
`autograd.Function` is traced through); the recursion unrolls into about 2 log2(l) levels at
trace time (25 for l = 3136).

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


def _previous_states(states: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
    """h_{t-1} at every step: (..., l) -> (..., l), h_{-1} the initial state or zeros."""
    if initial_state is None:
        return F.pad(states[..., :-1], (1, 0))  # (..., l), h_{-1} = 0
    return torch.cat([initial_state[..., None], states[..., :-1]], dim=-1)  # (..., l)


class StateRecurrence(torch.autograd.Function):
    """h_t = exp(log_decay_t) h_{t-1} + drive_t from h_{-1} = initial_state, solved by
    `linear_recurrence`, differentiated in the loop's products (see the module docstring).

    The forward does not record the odd-even levels for autograd; the backward and the
    forward-mode derivative are each one more `linear_recurrence` and elementwise products, so
    `torch.func` (grad, vmap, jvp) and `torch.compile` trace them, and the backward is itself
    differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        log_decay: torch.Tensor, drive: torch.Tensor, initial_state: torch.Tensor | None
    ) -> torch.Tensor:
        if initial_state is not None:  # fold h_{-1} into the first step: dA_0 h_{-1} + dBu_0
            decayed = torch.exp(log_decay[..., :1]) * initial_state[..., None]  # (..., 1)
            drive = torch.cat([decayed + drive[..., :1], drive[..., 1:]], dim=-1)  # (..., l)
        return linear_recurrence(log_decay, drive)  # (..., l)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        log_decay, _, initial_state = inputs
        ctx.save_for_backward(log_decay, output, initial_state)
        ctx.save_for_forward(log_decay, output, initial_state)

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor):
        log_decay, states, initial_state = ctx.saved_tensors
        decay = torch.exp(log_decay)  # (..., l): dA_t
        # The adjoint g_t = grad_t + dA_{t+1} g_{t+1} is the same recurrence read backwards in
        # time; dA_l multiplies g_l = 0, so its exponent is padded with 0.
        log_next = F.pad(log_decay[..., 1:], (0, 1))  # (..., l): log dA_{t+1}
        adjoint = linear_recurrence(log_next.flip(-1), grad_states.flip(-1)).flip(-1)  # (..., l)
        previous = _previous_states(states, initial_state)  # (..., l): h_{t-1}
        grad_log_decay = adjoint * previous * decay  # (..., l): g_t h_{t-1} dA_t
        grad_initial = None if initial_state is None else adjoint[..., 0] * decay[..., 0]  # g_0 dA_0
        return grad_log_decay, adjoint, grad_initial

    @staticmethod
    def jvp(ctx, log_decay_tangent, drive_tangent, initial_tangent):
        # dh_t = dA_t dh_{t-1} + (dA_t h_{t-1}) dlog_decay_t + ddrive_t: the recurrence again.
        log_decay, states, initial_state = ctx.saved_tensors
        tangent = torch.zeros_like(states) if drive_tangent is None else drive_tangent  # (..., l)
        if log_decay_tangent is not None:
            previous = _previous_states(states, initial_state)  # (..., l): h_{t-1}
            tangent = tangent + torch.exp(log_decay) * previous * log_decay_tangent  # (..., l)
        return StateRecurrence.apply(log_decay, tangent, initial_tangent)  # (..., l)


def scan_states(
    log_decay: torch.Tensor, drive: torch.Tensor, initial_state: torch.Tensor | None = None
) -> torch.Tensor:
    """Every state h_t of h_t = exp(log_decay_t) h_{t-1} + drive_t, with h_{-1} = initial_state
    (..., ) or zeros: log_decay, drive (..., l) -> h (..., l). The values of `linear_recurrence`;
    gradients in the loop's products, so NaN and infinity reach them as they reach the loop's."""
    return StateRecurrence.apply(log_decay, drive, initial_state)


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
    # Each route's B and C serve all d channels of that route. (dt B) u in the loop's order:
    # dt u first would factor an infinite dt or u out of the gradients' sums over n.
    dtB = torch.einsum("bkdl,bknl->bkdnl", dt.unflatten(1, (k, d)), B)  # (b, k, d, n, l)
    dBu = dtB.flatten(1, 2) * u[:, :, None]  # (b, k*d, n, l)
    initial_state = None if initial_state is None else initial_state.to(dtype)  # (b, k*d, n)
    states = scan_states(dtA, dBu, initial_state)  # (b, k*d, n, l): h_t at every step
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
