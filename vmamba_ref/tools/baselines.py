"""What VMamba is compared with in the examples: a small residual CNN, a small ViT, and VMamba
with its scan removed.

- `SmallCNN`: the stem of `vmamba_mini` (two stride-2 3x3 convolutions), stages of ResNet basic
  blocks, stride-2 3x3 convolutions between stages, a pooled linear head.
- `SmallViT`: ViT (Dosovitskiy et al., 2021) at small scale: non-overlapping patches, a learned
  position embedding, pre-norm transformer blocks, mean pooling (no class token) and a linear
  head.
- `remove_scan(model)`: every SS2D of a VMamba keeps all its layers but its core returns only
  the skip term, y = sum over routes k of D_k * u (`skip_only_core`): the selective scan's
  recurrence, the part that carries information along a route, is gone. Comparing a model
  with its scan-free twin measures what the scan contributes.
"""

from __future__ import annotations

import torch
from torch import nn

from vmamba_ref.contract import ROUTES, ScanOps, compute_dtype
from vmamba_ref.layers import LayerNorm2d
from vmamba_ref.ss2d import SS2D


class ResidualBlock(nn.Module):
    """relu(x + bn(conv3x3(relu(bn(conv3x3(x)))))), a ResNet basic block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))  # (b, c, h, w)
        return torch.relu(x + self.norm2(self.conv2(y)))  # (b, c, h, w)


class SmallCNN(nn.Module):
    """The CNN baseline, shaped like vmamba_mini: the same stem (two stride-2 3x3 convolutions),
    stages of `depths` residual blocks at `dims` widths, stride-2 3x3 convolutions between
    stages, and a pooled linear head. `forward_features` returns the (b, c3, H/32, W/32) map
    (for four stages)."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10,
                 depths: tuple[int, ...] = (1, 1, 2, 1), dims: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        c0 = dims[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1), LayerNorm2d(c0 // 2), nn.GELU(),
            nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1), LayerNorm2d(c0),
        )
        stages: list[nn.Module] = []
        for i, (depth, c) in enumerate(zip(depths, dims, strict=True)):
            stages += [ResidualBlock(c) for _ in range(depth)]
            if i < len(dims) - 1:
                stages += [nn.Conv2d(c, dims[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(dims[i + 1])]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (b, c3, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))  # (b, num_classes)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, c: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(c)
        hidden = int(mlp_ratio * c)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)  # (b, l, c)
        x = x + self.attn(y, y, y, need_weights=False)[0]  # (b, l, c)
        return x + self.mlp(self.norm2(x))  # (b, l, c)


class SmallViT(nn.Module):
    """The transformer baseline: `patch` x `patch` patches embedded to width `dim`, a learned
    position embedding for an `image_size` x `image_size` input, `depth` pre-norm blocks,
    a final LayerNorm, mean pooling over the tokens, a linear head."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, image_size: int = 32, patch: int = 4,
                 dim: int = 96, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"SmallViT: image_size {image_size} is not a multiple of patch {patch}")
        self.embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))  # (1, l, c)
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (b, c, h, w) -> (b, l, c)
        tokens = self.blocks(tokens + self.position)  # (b, l, c)
        return self.head(self.norm(tokens).mean(dim=1))  # (b, num_classes)


def skip_only_core(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The SS2D core without its scan, with `ss2d_core`'s signature: every route's output is
    only the skip term D * u, and the cross-merge sums the four routes back onto the grid,
    y = (sum_k D_k) * x. It equals `ss2d_core` with C = 0. delta, A, B, C and delta_bias are
    ignored. x (b, d, h, w), D (k*d,) -> (b, d, h, w) in the scan's computation dtype."""
    d = x.shape[1]
    dtype = compute_dtype(x.dtype)
    if D is None:
        return torch.zeros_like(x, dtype=dtype)  # (b, d, h, w)
    skip = D.to(dtype).view(ROUTES, d).sum(dim=0)  # (k*d,) -> (d,)
    return skip[:, None, None] * x.to(dtype)  # (b, d, h, w)


def remove_scan(model: nn.Module) -> nn.Module:
    """Give every SS2D in `model` a core that keeps only the skip term (`skip_only_core`), in
    place, and return `model`. The SS2D modules' other layers, their parameters and the rest
    of the network are left as they are; the step-size, A and B/C parameters then receive no
    gradient. Raises ValueError when `model` holds no SS2D."""
    mixers = [module for module in model.modules() if isinstance(module, SS2D)]
    if not mixers:
        raise ValueError(f"remove_scan: {type(model).__name__} holds no SS2D module")
    for mixer in mixers:
        ops = mixer.ops
        mixer.ops = ScanOps(f"{ops.name}, scan removed", ops.cross_scan, ops.cross_merge, ops.selective_scan,
                            skip_only_core)
    return model
