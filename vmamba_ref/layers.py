"""Small building blocks of the channel-first network: every tensor is (b, c, h, w).

The released VMamba models are channel-first (official `norm_layer="ln2d"`): a LayerNorm
normalises the channels of each pixel, and every "linear" layer is a 1x1 convolution whose weight
is stored in nn.Linear's (out, in) shape, so checkpoints keep the linear layers' keys and shapes.

Shapes are channel-first; memory need not be. Both layers work on the (b, h, w, c) view of their
input, which is free when the map is stored channels_last (`torch.channels_last`, as the network
keeps its maps on the CPU): the per-pixel linear map is then one matrix product over b*h*w rows
and the LayerNorm normalises contiguous rows, with no layout copy. On a channel-first map the
same code is correct and copies once. Off the CPU the maps stay channel-first and Linear2d
runs as the official 1x1 convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a (b, c, h, w) map, per pixel (not GroupNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (b, c, h, w) -> (b, h, w, c)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (b, h, w, c) -> (b, c, h, w)


class Linear2d(nn.Linear):
    """A per-pixel linear map (a 1x1 convolution) with nn.Linear's (out, in) weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # the network keeps GPU maps channel-first, as the official one
            return self.forward_as_conv(x)  # (b, out, h, w)
        x = F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias)  # (b, h, w, in) -> (b, h, w, out)
        return x.permute(0, 3, 1, 2)  # (b, h, w, out) -> (b, out, h, w)

    def forward_as_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The same map as the official layer computes it, a 1x1 convolution: what runs off the
        CPU, and what the FLOP counter runs, so that these layers count under `conv` as in the
        authors' tables."""
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)  # (b, in, h, w) -> (b, out, h, w)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept (out, in, 1, 1) convolution weights as well as (out, in).
        key = prefix + "weight"
        if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].shape[2:] == (1, 1):
            state_dict[key] = state_dict[key][:, :, 0, 0]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a whole residual branch per sample
    with probability p and scale the kept ones by 1 / (1 - p); identity in evaluation.

    The per-sample factor (0 or 1 / (1 - p)) is formed first and the branch multiplied by it
    once, as timm's `drop_path` does: one pass over the map forward and one backward, where
    masking and then dividing took two of each."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        scale = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)  # (b, 1, 1, 1)
        return x * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU2d(nn.GELU):
    """nn.GELU (exact, erf) for a (b, c, h, w) map. A map stored channels_last (as the network
    keeps its CPU maps) goes through torch's kernel as its (b, h, w, c) view, a contiguous
    tensor: the 4-D channels_last tensor takes another path, measured 1.7-2.1x slower forward
    and 1.5x slower backward on this project's CPUs, with other rounding. The view gives the
    bits of a contiguous channel-first map, the official layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_contiguous():
            view = x.permute(0, 2, 3, 1)  # (b, h, w, c); a test torch.func.vmap can run, unlike
            if view.is_contiguous():  # is_contiguous(memory_format=torch.channels_last)
                return super().forward(view).permute(0, 3, 1, 2)  # (b, c, h, w)
        return super().forward(x)


class Mlp(nn.Module):
    """The channel MLP of a VSS block: fc1 (c -> hidden) -> GELU (exact) -> fc2 (hidden -> c)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear2d(c, hidden)
        self.act = GELU2d()
        self.fc2 = Linear2d(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (b, c, h, w) -> (b, hidden, h, w) -> (b, c, h, w)


ACTIVATIONS = {"silu": nn.SiLU, "gelu": GELU2d, "relu": nn.ReLU, "identity": nn.Identity}
