"""VMamba on one page: the whole network in plain PyTorch, to read from top to bottom.

Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024. This file imports nothing but
torch, runs no checks and has one implementation of each step: the slow, visible one. Its module
tree and state_dict keys are those of `vmamba_ref.vmamba_tiny` and `vmamba_mini` (and so of the
official checkpoints), and tests/test_one_page.py loads their weights into it and gets the same
logits. Only the headline design is here (official `forward_type="v05_noz"`: no gate, state size
n = 1, convolutional stem and downsampling); DropPath is left out, as it is the identity in
evaluation and holds no weights.

Dimension letters (lowercase, so they never clash with the SSM matrices A, B, C, D):
b batch, h, w the feature map, l = h*w the length of one route, k = 4 routes, c model channels,
d inner (SSM) channels, n state size, r rank of the step-size projection, e = r + 2n.

    python examples/vmamba_one_page.py      # builds VMamba-T and classifies a random image
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (b, c, h, w) map (official "ln2d")."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (b, h, w, c) -> (b, c, h, w)


class Linear2d(nn.Linear):
    """A per-pixel linear map, a 1x1 convolution with nn.Linear's (out, in) weight."""

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)  # (b, in, h, w) -> (b, out, h, w)


def cross_scan(x):
    """Section 3.3, figure 2: read the grid along four routes. (b, d, h, w) -> (b, k=4, d, l)."""
    rows = x.flatten(2)  # route 0, row-major: (b, d, l)
    cols = x.transpose(2, 3).flatten(2)  # route 1, column-major: (b, d, l)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # routes 2, 3: reversed


def cross_merge(ys, h, w):
    """The adjoint of cross_scan: put every route's outputs back in place and sum them.
    (b, k=4, d, l) -> (b, d, h, w)."""
    b, _, d, _ = ys.shape

    def from_cols(y):  # column-major (b, d, l) -> grid (b, d, h, w)
        return y.view(b, d, w, h).transpose(2, 3)

    rows, reversed_rows = ys[:, 0].view(b, d, h, w), ys[:, 2].flip(-1).view(b, d, h, w)
    return rows + from_cols(ys[:, 1]) + reversed_rows + from_cols(ys[:, 3].flip(-1))


def selective_scan(u, delta, A, B, C, D, delta_bias):
    """Mamba's S6 (Mamba section 3.2, VMamba section 3.2), one step at a time.
    u, delta (b, k*d, l); A (k*d, n); B, C (b, k, n, l), one per route; D, delta_bias (k*d,)."""
    kd, k = u.shape[1], B.shape[1]
    dt = F.softplus(delta + delta_bias[:, None])  # step size Δ = softplus(δ + b_Δ): (b, k*d, l)
    B = B.repeat_interleave(kd // k, dim=1)  # each route's B serves its d channels: (b, k*d, n, l)
    C = C.repeat_interleave(kd // k, dim=1)  # (b, k*d, n, l)
    state = u.new_zeros(u.shape[0], kd, A.shape[1])  # h_{-1} = 0: (b, k*d, n)
    ys = []
    for t in range(u.shape[2]):
        dA = torch.exp(dt[:, :, t, None] * A)  # Ā = exp(ΔA), zero-order hold: (b, k*d, n)
        dBu = dt[:, :, t, None] * B[..., t] * u[:, :, t, None]  # B̄x = ΔBx, Euler: (b, k*d, n)
        state = dA * state + dBu  # h_t = Ā h_{t-1} + B̄ x_t
        ys.append((C[..., t] * state).sum(-1) + D * u[:, :, t])  # y_t = C h_t + D x_t: (b, k*d)
    return torch.stack(ys, dim=-1)  # (b, k*d, l)


class SS2D(nn.Module):
    """The 2-D selective scan (section 3.3): 1x1 in, depthwise 3x3 conv, SiLU, the four-route
    scan, LayerNorm, 1x1 out. The SSM parameters come first, in the official checkpoint order."""

    def __init__(self, c, ssm_ratio=1.0, n=1):
        super().__init__()
        d, r, k = int(ssm_ratio * c), math.ceil(c / 16), 4  # r: dt_rank "auto"
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-d**-0.5, d**-0.5))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1.0, n + 1).repeat(k * d, 1)))  # (k*d, n)
        self.Ds = nn.Parameter(torch.ones(k * d))  # skip D: (k*d,)
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-r**-0.5, r**-0.5))
        dt = torch.exp(torch.empty(k, d).uniform_(math.log(1e-3), math.log(0.1)))  # Δ in [0.001, 0.1]
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(Δ): (k, d)
        self.out_norm = LayerNorm2d(d)
        self.in_proj = Linear2d(c, d, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d, d, 3, padding=1, groups=d, bias=False)
        self.out_proj = Linear2d(d, c, bias=False)

    def forward(self, x):
        x = self.act(self.conv2d(self.in_proj(x)))  # (b, c, h, w) -> (b, d, h, w)
        b, d, h, w = x.shape
        n = self.A_logs.shape[1]
        xs = cross_scan(x)  # (b, k, d, l)
        x_dbl = torch.einsum("b k d l, k e d -> b k e l", xs, self.x_proj_weight)  # W_r per route
        dts, Bs, Cs = x_dbl.split([x_dbl.shape[2] - 2 * n, n, n], dim=2)  # (b,k,r,l), (b,k,n,l) x2
        deltas = torch.einsum("b k r l, k d r -> b k d l", dts, self.dt_projs_weight)  # W_Δ per route
        A = -torch.exp(self.A_logs)  # negative, so every state decays: (k*d, n)
        ys = selective_scan(xs.flatten(1, 2), deltas.flatten(1, 2), A, Bs, Cs, self.Ds,
                            self.dt_projs_bias.flatten())  # (b, k*d, l)
        y = cross_merge(ys.view(b, 4, d, h * w), h, w)  # (b, d, h, w)
        return self.out_proj(self.out_norm(y))  # (b, c, h, w)


class Mlp(nn.Module):
    """The channel MLP: 1x1 c -> hidden, GELU, 1x1 hidden -> c."""

    def __init__(self, c, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = Linear2d(c, hidden), nn.GELU(), Linear2d(hidden, c)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))  # (b, c, h, w)


class VSSBlock(nn.Module):
    """Section 3.4, figure 3: x + SS2D(LN(x)), then x + MLP(LN(x)), both pre-norm residuals."""

    def __init__(self, c, ssm_ratio, mlp_ratio):
        super().__init__()
        self.norm, self.op = LayerNorm2d(c), SS2D(c, ssm_ratio)
        self.norm2, self.mlp = LayerNorm2d(c), Mlp(c, int(c * mlp_ratio))

    def forward(self, x):
        x = x + self.op(self.norm(x))  # (b, c, h, w)
        return x + self.mlp(self.norm2(x))


class VMamba(nn.Module):
    """Stem to (b, c0, H/4, W/4); four stages, each ending in a stride-2 downsample into the next
    width (not the last); then LayerNorm, average pool, linear head (section 3.4). The Sequential
    indices skip numbers, as the official ones do, so the checkpoint keys match."""

    def __init__(self, depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), ssm_ratio=1.0,
                 mlp_ratio=4.0, num_classes=1000, in_chans=3):
        super().__init__()
        c0 = dims[0]
        self.patch_embed = nn.Sequential(OrderedDict([
            ("0", nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1)),  # (b, c0/2, H/2, W/2)
            ("2", LayerNorm2d(c0 // 2)), ("4", nn.GELU()),
            ("5", nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1)),  # (b, c0, H/4, W/4)
            ("7", LayerNorm2d(c0)),
        ]))
        self.layers = nn.ModuleList()
        for i, (depth, c) in enumerate(zip(depths, dims, strict=True)):
            downsample = nn.Identity() if i == len(dims) - 1 else nn.Sequential(OrderedDict([
                ("1", nn.Conv2d(c, dims[i + 1], 3, stride=2, padding=1)),  # (b, c_{i+1}, h/2, w/2)
                ("3", LayerNorm2d(dims[i + 1])),
            ]))
            blocks = nn.Sequential(*[VSSBlock(c, ssm_ratio, mlp_ratio) for _ in range(depth)])
            self.layers.append(nn.Sequential(OrderedDict([("blocks", blocks), ("downsample", downsample)])))
        self.classifier = nn.Sequential(OrderedDict([
            ("norm", LayerNorm2d(dims[-1])), ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)), ("head", nn.Linear(dims[-1], num_classes)),
        ]))
        for module in self.modules():  # linear maps (1x1 ones too): truncated normal, std 0.02
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.patch_embed(x)  # (b, 3, H, W) -> (b, c0, H/4, W/4)
        for layer in self.layers:
            x = layer(x)  # (b, c_{i+1}, h/2, w/2); the last stage keeps its size
        return self.classifier(x)  # (b, num_classes)


def vmamba_tiny():
    """VMamba-T: 30,249,064 parameters, 82.6% ImageNet top-1 in the paper."""
    return VMamba()


def vmamba_mini():
    """The small model of the project's tests and CPU examples: about 0.3M parameters."""
    return VMamba(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), mlp_ratio=2.0, num_classes=10)


if __name__ == "__main__":
    model = vmamba_tiny().eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64))  # (b, 1000)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"VMamba-T: {parameters:,} parameters, logits {tuple(logits.shape)}")
