"""Measurements behind the tutorial's claims, from the reference operators (docs/tutorial/).

| function              | claim it measures                                                        | page        |
|-----------------------|--------------------------------------------------------------------------|-------------|
| `scan_jacobian`       | one route is causal in its order; four routes let every token see every token | routes.md |
| `selectivity_example` | a token with a large step size resets the state; one with a tiny step is ignored | selective.md |
| `impulse_response`, `memory_length` | an impulse survives about 1 / (dt \\|a\\|) steps     | ssm.md      |

`vmamba_ref.tools.figures` draws each; the pages assert on the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch

from vmamba_ref.contract import ROUTES
from vmamba_ref.cross_scan import cross_merge, cross_scan
from vmamba_ref.selective_scan import selective_scan


def scan_jacobian(
    h: int, w: int, routes: Sequence[int] = range(ROUTES), seed: int = 0
) -> torch.Tensor:
    """J (l, l), l = h*w, float64: J[p, q] = d y[p] / d x[q] for one channel (d = n = 1) scanned
    along `routes` only and cross-merged, with p and q row-major grid positions.

    x is read by cross-scan, each route is scanned by the reference `selective_scan` with random
    delta, A, B and C (seeded), the routes left out are zeroed, and cross-merge sums the rest on
    the grid. J[p, q] != 0 says the output at p depends on the input at q.
    """
    generator = torch.Generator().manual_seed(seed)
    l = h * w
    delta = torch.randn(1, ROUTES, l, generator=generator, dtype=torch.float64)  # (b, k*d, l)
    A = -0.5 - torch.rand(ROUTES, 1, generator=generator, dtype=torch.float64)  # (k*d, n)
    B, C = torch.randn(2, 1, ROUTES, 1, l, generator=generator, dtype=torch.float64)  # (b, k, n, l)
    keep = torch.zeros(ROUTES, 1, dtype=torch.float64)  # (k, 1): 1 for the routes scanned
    keep[list(routes)] = 1.0

    def routes_scan(x: torch.Tensor) -> torch.Tensor:  # (l,) row-major grid -> (l,)
        xs = cross_scan(x.view(1, 1, h, w)).view(1, ROUTES, l)  # (b, k*d, l), d = 1
        ys = selective_scan(xs, delta, A, B, C) * keep  # (b, k*d, l)
        return cross_merge(ys.view(1, ROUTES, 1, h, w)).view(l)  # (b, d, h, w) -> (l,)

    x = torch.randn(l, generator=generator, dtype=torch.float64)
    return torch.autograd.functional.jacobian(routes_scan, x)  # (l, l)


def scan_states(
    u: torch.Tensor, delta: torch.Tensor, delta_bias: float, a: float = -1.0
) -> torch.Tensor:
    """h_t (l,) of one channel with n = 1, A = a, B = C = 1 and no D, so that the reference scan's
    output y_t is its state h_t. u, delta (l,), float64; dt_t = softplus(delta_t + delta_bias)."""
    l = u.shape[-1]
    ones = torch.ones(1, 1, 1, l, dtype=torch.float64)  # (b, k, n, l): B = C = 1
    A = torch.full((1, 1), a, dtype=torch.float64)  # (k*d, n)
    bias = torch.tensor([delta_bias], dtype=torch.float64)  # (k*d,)
    return selective_scan(u.view(1, 1, l), delta.view(1, 1, l), A, ones, ones, None, bias)[0, 0]


def selectivity_example(
    length: int = 60, marker: int = 30, spike: int = 12, seed: int = 0
) -> SimpleNamespace:
    """One channel (a = -1, n = 1, B = C = 1, D = 0) on two inputs, `first` and `second`, that
    differ before step `marker` and agree from there on, plus a large input spike at step `spike`.

    The bias b_delta sets a small step size everywhere, dt = softplus(b_delta) = 0.02 (a memory
    of about 50 steps). Three settings of delta, the input-dependent part:

    - `fixed`: delta = 0, dt is the bias's at every step (S4: no selection);
    - `reset`: delta = +16 at `marker`: dt about 12, dA = exp(-dt) about 6e-6, the state forgets;
    - `ignore`: delta = -12 at `spike`: dt about 1e-7, the spike is hardly written.

    Returns t (l,), and for each setting the states h_t of both inputs, (2, l).
    """
    generator = torch.Generator().manual_seed(seed)
    bias = float(
        torch.log(torch.expm1(torch.tensor(0.02, dtype=torch.float64)))
    )  # softplus^-1(0.02)
    shared = torch.randn(length, generator=generator, dtype=torch.float64)
    inputs = shared.repeat(2, 1)  # (2, l): first, second
    inputs[1, :marker] = torch.randn(marker, generator=generator, dtype=torch.float64) + 2.0
    inputs[:, spike] += 25.0  # the spike, in both inputs
    delta = {
        name: torch.zeros(length, dtype=torch.float64) for name in ("fixed", "reset", "ignore")
    }
    delta["reset"][marker] = 16.0
    delta["ignore"][spike] = -12.0
    states = {
        name: torch.stack([scan_states(u, d, bias) for u in inputs]) for name, d in delta.items()
    }  # fmt: skip
    return SimpleNamespace(t=torch.arange(length), u=inputs, marker=marker, spike=spike,
                           dt_bias=0.02, **states)  # fmt: skip


def impulse_response(dts: Sequence[float], a: float = -1.0, length: int = 1000) -> torch.Tensor:
    """h_t / h_0 (len(dts), length) after an impulse u = (1, 0, 0, ...) at a constant step size,
    one channel per dt (n = 1, B = C = 1, no softplus), from the reference scan: exp(dt a)^t."""
    m = len(dts)
    u = torch.zeros(1, m, length, dtype=torch.float64)  # (b, k*d, l), k = m routes of d = 1
    u[..., 0] = 1.0
    delta = torch.tensor(dts, dtype=torch.float64)[None, :, None].expand(
        1, m, length
    )  # (b, k*d, l)
    A = torch.full((m, 1), a, dtype=torch.float64)  # (k*d, n)
    ones = torch.ones(1, m, 1, length, dtype=torch.float64)  # (b, k, n, l)
    h = selective_scan(u, delta, A, ones, ones, delta_softplus=False)[0]  # (k*d, l) = h_t
    return h / h[:, :1]


def memory_length(response: torch.Tensor) -> torch.Tensor:
    """Per row of an impulse response (m, l): the first step t at which it is below 1/e (l if
    never). For exp(dt a)^t that is floor(1 / (dt |a|)) + 1."""
    below = response < torch.exp(torch.tensor(-1.0, dtype=response.dtype))  # (m, l)
    first = below.int().argmax(dim=1)  # the first True; 0 where there is none
    return torch.where(below.any(dim=1), first, torch.full_like(first, response.shape[1]))
