"""SS2D, the 2-D selective-scan token mixer of VMamba (paper section 3.3, figure 3).

For a feature map x (b, c, h, w), channel-first as the released models:

    x  = in_proj(x)                     (b, d, h, w)   1x1, no bias   [gated: (b, 2d, h, w) -> x, z]
    x  = act(depthwise_conv3x3(x))      (b, d, h, w)
    per route k and pixel:  (dt_k, B_k, C_k) = x_proj_k(x),  delta_k = dt_proj_k(dt_k)
    y  = ss2d_core(x, delta, A, B, C, D, dt_bias)   cross-scan, S6 per route, cross-merge
    y  = out_norm(y)                    LayerNorm over d
    y  = y * act(z)                     only when gated (Vanilla VMamba)
    out = out_proj(y)                   (b, c, h, w)   1x1, no bias

The headline models (official `forward_type="v05_noz"`) have no gate; Vanilla VMamba (`"v0"`)
has one, with d_state 16 and a conv bias. Both are this class with another `SS2DConfig`.

Official implementation: `SS2Dv2.forward_corev2` and `SS2Dv0.forward` in VMamba's `vmamba.py`.
Deviation: x_proj and dt_proj run on the grid before the scan instead of on the scanned copies;
they are per-pixel maps, so they commute with the route permutation (tested), and this is what
lets a fused kernel skip the four scanned copies.
"""

from __future__ import annotations

import torch
from torch import nn

from vmamba_ref.config import SS2DConfig
from vmamba_ref.contract import ROUTES, compute_dtype, get_ops
from vmamba_ref.init import init_ssm_
from vmamba_ref.layers import ACTIVATIONS, LayerNorm2d, Linear2d


class SS2D(nn.Module):
    """The SS2D mixer for a stage of width `c` (d = int(ssm_ratio * c), r = dt_rank)."""

    def __init__(self, c: int, config: SS2DConfig = SS2DConfig(), backend: str = "ref", eps: float = 1e-5):
        super().__init__()
        d, n, r, k = config.inner_dim(c), config.d_state, config.rank(c), ROUTES
        self.config, self.d, self.n, self.r = config, d, n, r
        self.backend = backend
        self.ops = get_ops(backend)
        # SSM parameters first, so the state_dict order matches the official checkpoints.
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))  # (k, r+2n, d)
        self.A_logs = nn.Parameter(torch.empty(k * d, n))  # (k*d, n)
        self.Ds = nn.Parameter(torch.empty(k * d))  # (k*d,)
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))  # (k, d, r)
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))  # (k, d)
        self.out_norm = LayerNorm2d(d, eps=eps)
        self.in_proj = Linear2d(c, 2 * d if config.gated else d, bias=False)
        self.act = ACTIVATIONS[config.act]()
        self.conv2d = nn.Conv2d(
            d, d, config.d_conv, padding=config.d_conv // 2, groups=d, bias=config.conv_bias
        )
        self.out_proj = Linear2d(d, c, bias=False)
        init_ssm_(self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds, config)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """The selective-scan part: projections per route, then the SS2D core. (b, d, h, w) ->
        (b, d, h, w) in float32 (float64 for float64 x).

        The projections are per-pixel matrix products. x_proj runs on the (b, l, d) token rows of
        x, a view of x stored either way (channels_last, as the network keeps its maps on the
        CPU, or channel-first), so the largest product reads x in place; dt_proj then takes the small (b, k, r, l)
        step ranks to the (b, k, d, l) layout that the core reads, with no copy of delta, the
        largest tensor here (k times x). B and C are reordered once (n rows per route, small).
        Both projections are batched products, as the official grouped ones, which is how the
        FLOP count files them (`vmamba_ref.tools.flops`).
        """
        b, d, h, w = x.shape
        k, e, r, n, l = ROUTES, self.r + 2 * self.n, self.r, self.n, h * w
        dtype = compute_dtype(x.dtype)  # the SSM parameters enter in float32 at least
        if x.device.type == "cpu":
            # The CPU kernels read float32: with low-precision x the projections run in float32
            # too (few multiply-adds: d -> k*(r+2n) and r -> d per token), so that delta, k
            # times larger than x, is written once in the kernel's dtype, not cast afterwards.
            x = x.to(dtype)  # (b, d, h, w)
        with torch.autocast("cpu", enabled=False):  # the line above chose the CPU's dtype
            tokens = x.flatten(2).transpose(1, 2)  # (b, d, h, w) -> (b, l, d), a view in either layout
            weight = self.x_proj_weight.to(x.dtype).reshape(k * e, d).t().expand(b, d, k * e)  # (b, d, k*e)
            x_dbl = torch.bmm(tokens, weight)  # (b, l, d) @ (b, d, k*e) -> (b, l, k*e)
            dts, Bs, Cs = torch.split(x_dbl.view(b, l, k, e), [r, n, n], dim=3)  # (b,l,k,r), (b,l,k,n) x2
            dt_weight = self.dt_projs_weight.to(x.dtype)  # (k, d, r)
            if self.ops.channels_last_steps and x.device.type == "cpu":
                # Stored channels innermost, the layout of the backend's fastest kernels
                # (`ScanOps.channels_last_steps`); the same numbers, another order in memory.
                delta = torch.matmul(dts.permute(0, 2, 1, 3), dt_weight.transpose(1, 2))  # (b,k,l,r) @ (k,r,d) -> (b,k,l,d)
                delta = delta.transpose(2, 3)  # (b, k, l, d) -> (b, k, d, l), a view
            else:
                delta = torch.matmul(dt_weight, dts.permute(0, 2, 3, 1))  # (k,d,r) @ (b,k,r,l) -> (b,k,d,l)
        Bs = Bs.permute(0, 2, 3, 1).reshape(b, k, n, h, w)  # (b, l, k, n) -> (b, k, n, h, w)
        Cs = Cs.permute(0, 2, 3, 1).reshape(b, k, n, h, w)  # (b, l, k, n) -> (b, k, n, h, w)
        # Under a GPU's autocast the products may come out in another dtype than x: align them.
        delta, Bs, Cs = (t.to(x.dtype) for t in (delta, Bs, Cs))
        A = -torch.exp(self.A_logs.to(dtype))  # (k*d, n)
        D, delta_bias = self.Ds.to(dtype), self.dt_projs_bias.to(dtype).reshape(-1)  # (k*d,) each
        delta = delta.view(b, k, d, h, w)  # (b, k, d, l) -> (b, k, d, h, w)
        return self.ops.ss2d_core(x, delta, A, Bs, Cs, D, delta_bias, True)  # (b, d, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)  # (b, c, h, w) -> (b, d, h, w) or (b, 2d, h, w)
        if self.config.gated:
            x, z = x.chunk(2, dim=1)  # (b, d, h, w) each
            z = self.act(z)  # (b, d, h, w)
        x = self.act(self.conv2d(x))  # (b, d, h, w)
        y = self.scan(x)  # (b, d, h, w), float32 for low-precision x
        y = self.out_norm(y.to(self.out_norm.weight.dtype)).to(x.dtype)  # (b, d, h, w)
        if self.config.gated:
            y = y * z  # (b, d, h, w)
        return self.out_proj(y)  # (b, c, h, w)

    def extra_repr(self) -> str:
        return f"d={self.d}, n={self.n}, r={self.r}, backend={self.backend!r}"
