"""VMamba: the network around SS2D (paper section 3.4, figure 3), channel-first.

    image (b, 3, H, W)
    -> patch_embed                       (b, c0, H/4, W/4)
    -> stage i = depth_i x VSSBlock(c_i), then downsample to (b, c_{i+1}, h/2, w/2) (not after the last)
    -> classifier: LayerNorm, global average pool, linear   (b, num_classes)

    VSSBlock:  x = x + DropPath(SS2D(LN(x)));   x = x + DropPath(MLP(LN2(x)))   (MLP if mlp_ratio > 0)

Module names and Sequential indices follow the official checkpoints (`patch_embed.0`,
`layers.0.blocks.0.op.A_logs`, `layers.0.downsample.1`, `classifier.head`, ...), so official
state_dicts load with `strict=True`. Where the official channel-first code keeps an index for a
layout permute that is the identity here, the index is skipped rather than filled with a no-op.

Official implementation: `VSSM`, `VSSBlock`, `_make_patch_embed_v2`, `_make_downsample_v3` and
`PatchMerging2D` in VMamba's `vmamba.py`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import torch
from torch import nn

from vmamba_ref.backends import check_backend_name
from vmamba_ref.checks import check_finite, check_shape, check_tensor
from vmamba_ref.config import SS2DConfig, VMambaConfig
from vmamba_ref.init import init_network_
from vmamba_ref.layers import DropPath, LayerNorm2d, Linear2d, Mlp
from vmamba_ref.ss2d import SS2D


class VSSBlock(nn.Module):
    """Pre-norm residual block: SS2D token mixer, then the channel MLP. One DropPath serves both
    branches, as in the official block."""

    def __init__(self, c: int, config: VMambaConfig, drop_path: float, backend: str) -> None:
        super().__init__()
        self.norm = LayerNorm2d(c, eps=config.norm_eps)
        self.op = SS2D(c, config.ssm, backend=backend, eps=config.norm_eps)
        self.drop_path = DropPath(drop_path)
        self.mlp_branch = config.mlp_ratio > 0
        if self.mlp_branch:
            self.norm2 = LayerNorm2d(c, eps=config.norm_eps)
            self.mlp = Mlp(c, int(c * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))  # (b, c, h, w)
        if self.mlp_branch:
            x = x + self.drop_path(self.mlp(self.norm2(x)))  # (b, c, h, w)
        return x


class PatchMerging2d(nn.Module):
    """Swin's downsampling (Vanilla VMamba): concatenate each 2x2 neighbourhood's channels in the
    order (0,0), (1,0), (0,1), (1,1) of (row, column) offsets, LayerNorm, then a linear reduction
    4c -> c_out without bias. Odd sides are zero-padded at the bottom and right."""

    def __init__(self, c: int, c_out: int, eps: float) -> None:
        super().__init__()
        self.reduction = Linear2d(4 * c, c_out, bias=False)
        self.norm = LayerNorm2d(4 * c, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        x = nn.functional.pad(x, (0, w % 2, 0, h % 2))  # (b, c, h + h%2, w + w%2)
        x = torch.cat(
            [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=1
        )  # (b, 4c, h/2, w/2)
        return self.reduction(self.norm(x))  # (b, c_out, h/2, w/2)


def make_stem(config: VMambaConfig) -> nn.Sequential:
    """Patch embedding to (b, c0, H/4, W/4). "conv2": conv3x3/2 -> LN -> GELU -> conv3x3/2 -> LN;
    "patch": conv4x4/4 -> LN. Indices as in the official module."""
    c0, eps = config.dims[0], config.norm_eps
    if config.stem == "patch":
        return nn.Sequential(OrderedDict([
            ("0", nn.Conv2d(config.in_chans, c0, kernel_size=4, stride=4)),
            ("2", LayerNorm2d(c0, eps=eps)),
        ]))
    return nn.Sequential(OrderedDict([
        ("0", nn.Conv2d(config.in_chans, c0 // 2, kernel_size=3, stride=2, padding=1)),
        ("2", LayerNorm2d(c0 // 2, eps=eps)),
        ("4", nn.GELU()),
        ("5", nn.Conv2d(c0 // 2, c0, kernel_size=3, stride=2, padding=1)),
        ("7", LayerNorm2d(c0, eps=eps)),
    ]))


def make_downsample(c: int, c_out: int, config: VMambaConfig) -> nn.Module:
    """Halve the resolution between stages: "conv" = conv3x3/2 (with bias) -> LN, indices 1 and 3
    as in the official module; "patch_merging" = PatchMerging2d."""
    if config.downsample == "patch_merging":
        return PatchMerging2d(c, c_out, config.norm_eps)
    return nn.Sequential(OrderedDict([
        ("1", nn.Conv2d(c, c_out, kernel_size=3, stride=2, padding=1)),
        ("3", LayerNorm2d(c_out, eps=config.norm_eps)),
    ]))


class VMamba(nn.Module):
    """The VMamba backbone and classifier (official name: VSSM).

    Args:
        config: the architecture; see the named constructors for the released models.
        backend: implementation of the scan operators, chosen once: "ref" (this package),
            "numba" or "triton" (vmamba_fast). An unavailable backend raises with what to install.
    """

    def __init__(self, config: VMambaConfig = VMambaConfig(), backend: str = "ref") -> None:
        super().__init__()
        check_backend_name(backend)
        self.config, self.backend = config, backend
        self.num_classes = config.num_classes
        self.num_features = config.dims[-1]
        self.patch_embed = make_stem(config)
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(1, total - 1) for i in range(total)]  # linear from 0
        self.layers = nn.ModuleList()
        for i, (depth, c) in enumerate(zip(config.depths, config.dims, strict=True)):
            start = sum(config.depths[:i])
            last = i == len(config.depths) - 1
            self.layers.append(nn.Sequential(OrderedDict([
                ("blocks", nn.Sequential(*[
                    VSSBlock(c, config, rates[start + j], backend) for j in range(depth)
                ])),
                ("downsample", nn.Identity() if last else make_downsample(c, config.dims[i + 1], config)),
            ])))
        self.classifier = nn.Sequential(OrderedDict([
            ("norm", LayerNorm2d(self.num_features, eps=config.norm_eps)),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)),
            ("head", nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()),
        ]))
        self.apply(init_network_)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise TypeError/ValueError for anything but a finite (b, in_chans, H, W) float batch."""
        check_tensor("VMamba.forward", "x", x)
        check_shape("VMamba.forward", "x", x, (None, self.config.in_chans, None, None), "b in_chans H W")
        check_finite("VMamba.forward", "x", x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: (b, in_chans, H, W) -> (b, c3, H/32, W/32)."""
        self.check_input(x)
        x = self.patch_embed(x)  # (b, c0, H/4, W/4)
        for layer in self.layers:
            x = layer(x)  # (b, c_{i+1}, h/2, w/2), the last stage keeps its size
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classifier: LayerNorm, average pool, linear. (b, c3, h, w) -> (b, num_classes), or the
        pooled features (b, c3) with `pre_logits`."""
        x = self.classifier.flatten(self.classifier.pool(self.classifier.norm(x)))  # (b, c3)
        return x if pre_logits else self.classifier.head(x)  # (b, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (b, num_classes)


def _build(config: VMambaConfig, backend: str, overrides: dict) -> VMamba:
    return VMamba(replace(config, **overrides), backend=backend)


VMAMBA_TINY = VMambaConfig(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), drop_path_rate=0.2)
VMAMBA_SMALL = VMambaConfig(
    depths=(2, 2, 15, 2), dims=(96, 192, 384, 768), ssm=SS2DConfig(ssm_ratio=2.0), drop_path_rate=0.3
)
VMAMBA_BASE = VMambaConfig(
    depths=(2, 2, 15, 2), dims=(128, 256, 512, 1024), ssm=SS2DConfig(ssm_ratio=2.0), drop_path_rate=0.6
)
_VANILLA_SSM = SS2DConfig(d_state=16, ssm_ratio=2.0, conv_bias=True, gated=True)
_VANILLA = dict(ssm=_VANILLA_SSM, mlp_ratio=0.0, stem="patch", downsample="patch_merging")
VMAMBA_VANILLA_TINY = VMambaConfig(depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), drop_path_rate=0.2, **_VANILLA)
VMAMBA_VANILLA_SMALL = VMambaConfig(depths=(2, 2, 27, 2), dims=(96, 192, 384, 768), drop_path_rate=0.3, **_VANILLA)
VMAMBA_VANILLA_BASE = VMambaConfig(depths=(2, 2, 27, 2), dims=(128, 256, 512, 1024), drop_path_rate=0.5, **_VANILLA)
VMAMBA_MINI = VMambaConfig(
    depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), mlp_ratio=2.0, drop_path_rate=0.0, num_classes=10
)


def vmamba_tiny(backend: str = "ref", **overrides) -> VMamba:
    """VMamba-T [s1l8]: 30,249,064 parameters, 4.91 GFLOPs at 224, 82.6% ImageNet top-1.
    `overrides` replace fields of VMambaConfig (e.g. num_classes=10); unknown names raise."""
    return _build(VMAMBA_TINY, backend, overrides)


def vmamba_small(backend: str = "ref", **overrides) -> VMamba:
    """VMamba-S [s2l15]: 50,147,752 parameters, 8.72 GFLOPs, 83.6%."""
    return _build(VMAMBA_SMALL, backend, overrides)


def vmamba_base(backend: str = "ref", **overrides) -> VMamba:
    """VMamba-B [s2l15]: 88,557,800 parameters, 15.36 GFLOPs, 83.9%."""
    return _build(VMAMBA_BASE, backend, overrides)


def vmamba_vanilla_tiny(backend: str = "ref", **overrides) -> VMamba:
    """Vanilla VMamba-T: gated SS2D with d_state 16, no MLP, 22,893,448 parameters, 82.2%."""
    return _build(VMAMBA_VANILLA_TINY, backend, overrides)


def vmamba_vanilla_small(backend: str = "ref", **overrides) -> VMamba:
    """Vanilla VMamba-S: 44,417,416 parameters, 83.5%."""
    return _build(VMAMBA_VANILLA_SMALL, backend, overrides)


def vmamba_vanilla_base(backend: str = "ref", **overrides) -> VMamba:
    """Vanilla VMamba-B: 76,254,056 parameters, 83.7%."""
    return _build(VMAMBA_VANILLA_BASE, backend, overrides)


def vmamba_mini(backend: str = "ref", **overrides) -> VMamba:
    """A small VMamba (about 0.3M parameters, 10 classes) for tests and CPU examples: stages of
    1, 1, 2, 1 blocks at widths 16-128, the headline models' SS2D design."""
    return _build(VMAMBA_MINI, backend, overrides)


MODELS = {
    "vmamba_tiny": vmamba_tiny,
    "vmamba_small": vmamba_small,
    "vmamba_base": vmamba_base,
    "vmamba_vanilla_tiny": vmamba_vanilla_tiny,
    "vmamba_vanilla_small": vmamba_vanilla_small,
    "vmamba_vanilla_base": vmamba_vanilla_base,
    "vmamba_mini": vmamba_mini,
}
