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
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from vmamba_ref.config import SS2DConfig, VMambaConfig
from vmamba_ref.contract import check_finite, check_shape, check_tensor, get_ops
from vmamba_ref.init import init_network_
from vmamba_ref.layers import DropPath, GELU2d, LayerNorm2d, Linear2d, Mlp
from vmamba_ref.ss2d import SS2D

CHUNK_TOKENS = 4096
"""Tokens per chunk of `in_chunks`: VMamba-T's stage 1 (56 x 56 = 3,136 tokens) runs image by
image, with its largest temporary (b=1, 4 * 96 channels) at 4.8 MB."""


def in_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tokens: int, backend: str, training: bool
) -> torch.Tensor:
    """fn(x) for a per-image fn, run on chunks of whole images of about `CHUNK_TOKENS` tokens
    (`tokens` per image at the resolution of fn's largest temporaries) when that pays: with a
    fast backend, in evaluation, on the CPU.

    Every operation of the network up to the pooling is per image (convolutions, per-pixel
    LayerNorms, the scans; DropPath is the identity in evaluation), so the output is the same,
    while each chunk's temporaries (the stem's 112 x 112 maps at 224 x 224, the MLP's 4c-wide
    hidden map, the k routes' step sizes) stay in the caches and under the allocator's mmap
    threshold (32 MiB in glibc): a plain process then neither zeroes fresh pages on every call
    nor streams them through DRAM. The "ref" backend, training, other devices, a symbolic batch
    size (torch.compile's dynamic shapes, torch.export with a free batch dimension) and
    TorchScript traces (whose chunk sizes would be frozen) take the whole batch; torch.compile
    with a fixed batch chunks as eager does.
    """
    b = x.shape[0]
    per_chunk = max(1, CHUNK_TOKENS // max(1, tokens))  # images per chunk
    traced = not isinstance(b, int) or torch.jit.is_tracing()
    if backend == "ref" or training or x.device.type != "cpu" or traced or per_chunk >= b:
        return fn(x)  # (b, ...)
    return torch.cat([fn(part) for part in x.split(per_chunk)], dim=0)  # (b, ...)


def cpu_layout(x: torch.Tensor) -> torch.Tensor:
    """x (b, c, h, w) stored channels_last on the CPU, where the per-pixel matrix products, the
    LayerNorms and the depthwise convolution run fastest in that layout (one copy of the image
    here, none in the layers: see `layers.py`); unchanged on other devices. The shapes and the
    numbers do not depend on the layout."""
    if x.device.type != "cpu":
        return x
    # What x.contiguous(memory_format=torch.channels_last) does, in a form torch.func.vmap runs.
    return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # (b, c, h, w), channels_last


def layout_conv_weights_(model: nn.Module) -> None:
    """Store the dense convolutions' weights (stem and downsampling) in the maps' layout:
    channels_last on the CPU, contiguous on other devices. A convolution of a channels_last map
    with a channel-first weight copies the weight to channels_last on every call (at VMamba-T's
    last downsampling, 2.6 million numbers: about 3 ms of a batch-1 forward). Only the strides
    change: the values, the shapes and the state_dict's contents stay as they are."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            weight = module.weight  # (c_out, c_in, kh, kw)
            layout = torch.channels_last if weight.device.type == "cpu" else torch.contiguous_format
            if not weight.is_contiguous(memory_format=layout):
                weight.data = weight.data.contiguous(memory_format=layout)


def _layout_conv_weights_after_load(model: nn.Module, incompatible_keys) -> None:
    """A load_state_dict post-hook: `load_state_dict(..., assign=True)` puts the checkpoint's
    own tensors in place. A module-level function, so that the model still pickles."""
    layout_conv_weights_(model)


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


class VSSStage(nn.Module):
    """One stage: its VSS blocks at width c, then the downsampling to the next stage's width and
    half the resolution (nn.Identity after the last stage). (b, c, h, w) -> (b, c', h', w')."""

    def __init__(self, blocks: nn.Sequential, downsample: nn.Module, backend: str) -> None:
        super().__init__()
        self.blocks, self.downsample, self.backend = blocks, downsample, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks, then downsampling: (b, c, h, w) -> (b, c', h', w'), in chunks of images
        (`in_chunks`), so a chunk's map is downsampled while it is still in the caches."""
        return self.chunked(self.run_chunk, x)  # (b, c', h', w')

    def run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.blocks(x))  # (b, c, h, w) -> (b, c', h', w')

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's VSS blocks alone on x (b, c, h, w), in chunks of images (`in_chunks`): the
        map before the downsampling, where `VMamba.forward_intermediates` taps."""
        return self.chunked(self.blocks, x)  # (b, c, h, w)

    def chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn on x (b, c, h, w) through `in_chunks`, at this stage's h * w tokens per image."""
        return in_chunks(fn, x, x.shape[2] * x.shape[3], self.backend, self.training)


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
        ("4", GELU2d()),
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
        get_ops(backend)  # the one check of the name; fails here, before anything is built
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
            self.layers.append(VSSStage(
                nn.Sequential(*[VSSBlock(c, config, rates[start + j], backend) for j in range(depth)]),
                nn.Identity() if last else make_downsample(c, config.dims[i + 1], config),
                backend,
            ))
        self.classifier = nn.Sequential(OrderedDict([
            ("norm", LayerNorm2d(self.num_features, eps=config.norm_eps)),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten(1)),
            ("head", nn.Linear(self.num_features, config.num_classes) if config.num_classes else nn.Identity()),
        ]))
        self.apply(init_network_)
        layout_conv_weights_(self)
        self.register_load_state_dict_post_hook(_layout_conv_weights_after_load)

    def _apply(self, fn, recurse=True):
        """nn.Module's: every move or cast (`to`, `cuda`, `cpu`, `half`, ...) goes through here,
        so the convolution weights follow the device's map layout (`layout_conv_weights_`), as
        they do after `load_state_dict`."""
        super()._apply(fn, recurse)
        layout_conv_weights_(self)
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise TypeError/ValueError for anything but a finite (b, in_chans, H, W) float batch.

        While `torch.compile` or `torch.export` trace the model, values are symbolic: the type and
        shape are checked, the finiteness check (which needs the data) runs only in eager mode.
        """
        check_tensor("VMamba.forward", "x", x)
        check_shape("VMamba.forward", "x", x, (None, self.config.in_chans, None, None), "b in_chans H W")
        if not torch.compiler.is_compiling():
            check_finite("VMamba.forward", "x", x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: (b, in_chans, H, W) -> (b, c3, H/32, W/32)."""
        self.check_input(x)
        x = cpu_layout(x)  # (b, in_chans, H, W)
        # The stem and the first stage run together on each chunk of images: the stem's output
        # (and its H/2 x W/2 maps before it) never exists for the whole batch (`in_chunks`).
        tokens = -(-x.shape[2] // 4) * -(-x.shape[3] // 4)  # the first stage's h * w per image
        x = in_chunks(self.run_first_stage, x, tokens, self.backend, self.training)  # (b, c1, H/8, W/8)
        for layer in self.layers[1:]:
            x = layer(x)  # (b, c_{i+1}, h/2, w/2), the last stage keeps its size
        return x

    def run_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, then the first stage (with its downsampling) on a chunk of images. The stage is
        called as a module, not through `run_chunk`, so its hooks fire (the FLOP counter's
        per-module report, a user's forward hook); its own `in_chunks` sees one chunk."""
        return self.layers[0](self.patch_embed(x))  # (b, in_chans, H, W) -> (b, c1, H/8, W/8)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classifier: LayerNorm, average pool, linear. (b, c3, h, w) -> (b, num_classes), or the
        pooled features (b, c3) with `pre_logits`."""
        x = self.classifier.flatten(self.classifier.pool(self.classifier.norm(x)))  # (b, c3)
        return x if pre_logits else self.classifier.head(x)  # (b, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (b, num_classes)

    # timm-style API: classifier access, stage maps for dense heads, metadata.

    def get_classifier(self) -> nn.Module:
        """The final linear layer (`classifier.head`; nn.Identity when num_classes is 0)."""
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised Linear(c3, num_classes), or nn.Identity
        for 0 (forward then returns the pooled (b, c3) features). `config.num_classes` follows,
        so a saved checkpoint rebuilds the new head. `global_pool` is timm's argument: VMamba
        pools by averaging only, so it must be None or "avg"."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"reset_classifier: num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool not in (None, "avg"):
            raise ValueError(f"reset_classifier: VMamba pools by averaging; global_pool must be None or 'avg', got {global_pool!r}")
        head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        head.apply(init_network_)
        param = next(self.classifier.norm.parameters())
        self.classifier.head = head.to(device=param.device, dtype=param.dtype)
        self.num_classes = num_classes
        self.config = replace(self.config, num_classes=num_classes)

    @property
    def feature_info(self) -> list[dict]:
        """One entry per stage map of `forward_intermediates`, as timm describes feature maps:
        channels, stride relative to the input, and the module that produces it."""
        return [
            {"num_chs": c, "reduction": 4 * 2**i, "module": f"layers.{i}.blocks"}
            for i, c in enumerate(self.config.dims[: len(self.layers)])
        ]

    @property
    def pretrained_cfg(self) -> dict:
        """timm's data configuration for this model: input size, ImageNet normalisation, and the
        official evaluation transform (bicubic resize to 256, centre crop 224: crop_pct 0.875)."""
        return {
            "input_size": (self.config.in_chans, 224, 224),
            "num_classes": self.num_classes,
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "first_conv": "patch_embed.0",
            "classifier": "classifier.head",
        }

    @property
    def default_cfg(self) -> dict:
        """timm's older name for `pretrained_cfg`."""
        return self.pretrained_cfg

    def stage_indices(self, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
        """Resolve timm's `indices`: None = every stage, an int n = the last n stages, a list =
        those stages (negative counts from the end). Returns sorted stage numbers."""
        n = len(self.layers)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int) and not isinstance(indices, bool):
            if not 1 <= indices <= n:
                raise ValueError(f"indices: an int must be in [1, {n}] (the last n stages), got {indices}")
            return list(range(n - indices, n))
        if not isinstance(indices, (list, tuple)) or not indices:
            raise ValueError(f"indices must be None, an int or a non-empty list of stage numbers, got {indices!r}")
        resolved = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"indices: stage numbers must be ints in [{-n}, {n - 1}], got {i!r}")
            resolved.append(i % n)
        return sorted(set(resolved))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage maps for detection and segmentation heads (timm's API).

        Stage i's map is the output of its blocks, before the downsampling that follows:
        (b, c_i, H/4/2^i, W/4/2^i) for H, W divisible by 32 (each halving rounds up), so the four
        maps of VMamba-T at 224 are (b, 96, 56, 56), (b, 192, 28, 28), (b, 384, 14, 14),
        (b, 768, 7, 7). This is where the official detection backbone (`Backbone_VSSM`) taps.

        Args:
            x: images (b, in_chans, H, W).
            indices: stages to return (see `stage_indices`); None = all four.
            norm: apply the final LayerNorm (`classifier.norm`) to the last stage's map.
            stop_early: skip the stages after the last one requested.
            output_fmt: "NCHW" (b, c, h, w) or "NHWC" (b, h, w, c).
            intermediates_only: return only the list of maps.

        Returns:
            The maps in stage order; unless `intermediates_only`, preceded by the final features
            that `forward_features` returns (after the last stage run).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"forward_intermediates: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = self.stage_indices(indices)
        last_stage = len(self.config.depths) - 1
        self.check_input(x)
        x = self.patch_embed(cpu_layout(x))  # (b, c0, H/4, W/4)
        stages = self.layers[: max(take) + 1] if stop_early else self.layers
        intermediates = []
        for i, layer in enumerate(stages):
            x = layer.run_blocks(x)  # (b, c_i, h_i, w_i)
            if i in take:
                feature = self.classifier.norm(x) if norm and i == last_stage else x  # (b, c_i, h_i, w_i)
                intermediates.append(feature if output_fmt == "NCHW" else feature.permute(0, 2, 3, 1))
            x = layer.downsample(x)  # (b, c_{i+1}, h_i/2, w_i/2); identity after the last stage
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] | None = None,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop what `forward_intermediates(indices)` does not need (timm's API): the stages after
        the last requested one, the head (`prune_head`: num_classes becomes 0) and the final
        LayerNorm (`prune_norm`). Returns the resolved stage indices."""
        take = self.stage_indices(indices)
        self.layers = self.layers[: max(take) + 1]
        if prune_head:
            self.reset_classifier(0)
        if prune_norm:
            self.classifier.norm = nn.Identity()
        return take


class VMambaFeatures(nn.Module):
    """Features-only mode: a VMamba backbone whose forward returns the stage maps.

    `forward(x)` is `model.forward_intermediates(x, out_indices, intermediates_only=True)`: a
    list of (b, c_i, H/4/2^i, W/4/2^i) maps, for a detection or segmentation neck. The classifier
    and the stages after the last index are pruned. `feature_info` lists the maps' channels and
    strides. Parameter names gain the prefix `model.`; load official weights into the VMamba
    before wrapping it.
    """

    def __init__(
        self,
        model: VMamba,
        out_indices: int | list[int] | tuple[int, ...] = (0, 1, 2, 3),
        norm: bool = False,
        output_fmt: str = "NCHW",
    ) -> None:
        super().__init__()
        if not isinstance(model, VMamba):
            raise TypeError(f"VMambaFeatures: model must be a VMamba, got {type(model).__name__}")
        all_info = model.feature_info
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.model, self.norm, self.output_fmt = model, norm, output_fmt
        self.feature_info = [all_info[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, self.out_indices, norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True
        )  # [(b, c_i, h_i, w_i) for i in out_indices]


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


def timm_entrypoint(name: str) -> Callable[..., nn.Module]:
    """A timm model entry point for the named constructor `name` (a key of MODELS).

    timm's `create_model(name, pretrained, pretrained_cfg, pretrained_cfg_overlay, **kwargs)`
    calls it with those three arguments and the caller's keyword arguments, minus those set to
    None. The entry point accepts `features_only` and `out_indices` (returning `VMambaFeatures`),
    `backend`, and any VMambaConfig field (`num_classes`, `in_chans`, `drop_path_rate`, ...);
    other timm options raise TypeError naming them. No weights are hosted for timm to download:
    `pretrained=True` or a pretrained tag raises; load the official files with
    `vmamba_ref.load_checkpoint` (or timm's `checkpoint_path`).
    """
    if name not in MODELS:
        raise ValueError(f"timm_entrypoint: name must be one of {sorted(MODELS)}, got {name!r}")
    constructor = MODELS[name]

    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: object = None,
        pretrained_cfg_overlay: dict | None = None,
        features_only: bool = False,
        out_indices: int | list[int] | tuple[int, ...] = (0, 1, 2, 3),
        backend: str = "ref",
        **overrides,
    ) -> nn.Module:
        if pretrained or pretrained_cfg or pretrained_cfg_overlay:
            raise ValueError(
                f"{name}: no pretrained weights are registered with timm (got pretrained={pretrained!r}, "
                f"pretrained_cfg={pretrained_cfg!r}, pretrained_cfg_overlay={pretrained_cfg_overlay!r}); "
                "create the model, then vmamba_ref.load_checkpoint(model, path) with the official file"
            )
        model = constructor(backend=backend, **overrides)
        return VMambaFeatures(model, out_indices) if features_only else model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm entry point of `{name}`. " + (constructor.__doc__ or "")
    return entrypoint


def register_timm_models() -> list[str]:
    """Register every named constructor with timm, so `timm.create_model("vmamba_tiny", ...)`
    builds it; returns the registered names. timm is optional: this is the only place that
    imports it, and without it this raises ImportError saying what to install."""
    try:
        from timm.models import register_model
    except ImportError as error:
        raise ImportError(
            "register_timm_models needs timm (which needs torchvision): pip install timm torchvision"
        ) from error
    for name in MODELS:
        register_model(timm_entrypoint(name))
    return list(MODELS)


# timm's register_model appends each registered name to its module's __all__.
__all__ = [
    "MODELS",
    "PatchMerging2d",
    "VMamba",
    "VMambaFeatures",
    "VSSBlock",
    "make_downsample",
    "make_stem",
    "register_timm_models",
    "timm_entrypoint",
    *MODELS,
]
