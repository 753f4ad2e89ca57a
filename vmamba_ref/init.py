"""The three SSM initializations the paper compares, and the rest of the network's init.

VMamba appendix (initialization ablation): "mamba" (official `ssm_init="v0"`), "random" (`"v1"`)
and "zero" (`"v2"`), which the paper finds reach about the same accuracy. Each acts on one SS2D's
parameters, all routes at once:

| parameter                  | shape      | mamba                                   | random           | zero          |
|----------------------------|------------|-----------------------------------------|------------------|---------------|
| A_logs (A = -exp(A_logs))  | (k*d, n)   | log(1..n) in every row: A = -[1..n]     | N(0, 1)          | 0: A = -1     |
| Ds                         | (k*d,)     | 1                                       | 1                | 1             |
| dt_projs_weight            | (k, d, r)  | U(-s/sqrt(r), s/sqrt(r))                | 0.1 * N(0, 1)    | 0.1 * U[0, 1) |
| dt_projs_bias              | (k, d)     | softplus^-1(dt), dt log-uniform in [dt_min, dt_max], >= floor | 0.1 * N(0, 1) | 0.1 * U[0, 1) |

`x_proj_weight` (k, r + 2n, d) keeps nn.Linear's default U(-1/sqrt(d), 1/sqrt(d)) in every case.

Official implementation: `mamba_init.dt_init / A_log_init / D_init` and `SS2Dv2.__initv2__` in
VMamba's `vmamba.py`. Deviation: random draws are not consumed in the official order, so a seed
gives other numbers with the same distributions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vmamba_ref.config import SS2DConfig


def inverse_softplus(dt: torch.Tensor) -> torch.Tensor:
    """The bias b with softplus(b) = dt: b = dt + log(-expm1(-dt)) = log(exp(dt) - 1)."""
    return dt + torch.log(-torch.expm1(-dt))


@torch.no_grad()
def init_ssm_(
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    config: SS2DConfig,
) -> None:
    """Fill one SS2D's SSM parameters in place according to `config.init` (table above)."""
    k, d, r = dt_projs_weight.shape  # (k, d, r)
    n = A_logs.shape[1]
    bound = 1.0 / math.sqrt(d)
    x_proj_weight.uniform_(-bound, bound)  # (k, r + 2n, d)
    Ds.fill_(1.0)  # (k*d,)
    if config.init == "mamba":
        std = config.dt_scale / math.sqrt(r)
        dt_projs_weight.uniform_(-std, std)  # (k, d, r)
        log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(k, d) * (log_max - log_min) + log_min)  # (k, d) log-uniform
        dt_projs_bias.copy_(inverse_softplus(dt.clamp(min=config.dt_init_floor)))  # (k, d)
        A = torch.arange(1, n + 1, dtype=torch.float32).expand(k * d, n)  # (k*d, n): [1..n]
        A_logs.copy_(torch.log(A))  # (k*d, n)
    elif config.init == "random":
        A_logs.normal_()  # (k*d, n)
        dt_projs_weight.normal_().mul_(0.1)  # (k, d, r)
        dt_projs_bias.normal_().mul_(0.1)  # (k, d)
    else:  # "zero"
        A_logs.zero_()  # (k*d, n)
        dt_projs_weight.uniform_(0.0, 1.0).mul_(0.1)  # (k, d, r)
        dt_projs_bias.uniform_(0.0, 1.0).mul_(0.1)  # (k, d)


@torch.no_grad()
def init_network_(module: nn.Module) -> None:
    """The official network-wide pass: every nn.Linear (the 1x1 "Linear2d" too) gets a normal
    weight with std 0.02 truncated at the absolute bounds +-2, and a zero bias; every LayerNorm
    gets weight 1, bias 0. Convolutions keep PyTorch's default. SS2D's own parameters are plain
    Parameters, untouched here."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
