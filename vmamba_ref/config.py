"""Typed configurations of VMamba, with the field names of the paper and the official configs.

Every released model is a `VMambaConfig`; the named constructors in `vmamba_ref.model` build
them. Fields are frozen and checked on construction, so a typo or an impossible value fails at
once with the field's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

Init = Literal["mamba", "random", "zero"]
"""The paper's three SSM initializations (section 5.3 / appendix): "mamba" is Mamba's (S4D-real
A, log-uniform step sizes; official `ssm_init="v0"`), "random" draws A_logs and the step-size
projection from normal distributions (`"v1"`), "zero" sets A = -1 and small uniform step sizes
(`"v2"`)."""

Activation = Literal["silu", "gelu", "relu", "identity"]
"""Activation after SS2D's depthwise convolution (official `ssm_act_layer`, SiLU by default)."""

Stem = Literal["conv2", "patch"]
""""conv2": two stride-2 3x3 convolutions with LayerNorms and a GELU (official `patchembed_version="v2"`);
"patch": one 4x4 stride-4 convolution and a LayerNorm (`"v1"`, Vanilla VMamba)."""

Downsample = Literal["conv", "patch_merging"]
""""conv": a 3x3 stride-2 convolution and a LayerNorm (official `downsample_version="v3"`);
"patch_merging": Swin's 2x2 concatenation, LayerNorm, linear reduction (`"v1"`, Vanilla VMamba)."""


def _check_choice(owner: str, name: str, value: object, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{owner}.{name} must be one of {list(options)}, got {value!r}")


def _check_real(owner: str, name: str, value: object, low: float, high: float = math.inf,
                low_open: bool = False, high_open: bool = True) -> None:
    """`value` must be a finite real number in the interval from `low` to `high` (open ends as
    flagged); the error names `owner.name` and the interval."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{name} must be a finite number in {interval}, got {value!r}")
    inside = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not math.isfinite(value) or not inside:
        raise ValueError(f"{owner}.{name} must be a finite number in {interval}, got {value!r}")


@dataclass(frozen=True)
class SS2DConfig:
    """The SS2D token mixer (paper section 3.3)."""

    d_state: int = 1  # n: state size per channel (official ssm_d_state)
    ssm_ratio: float = 1.0  # d = int(ssm_ratio * c): inner channels of the scan
    dt_rank: int | None = None  # r: rank of the step-size projection; None = ceil(c / 16) ("auto")
    d_conv: int = 3  # kernel size of the depthwise convolution before the scan
    conv_bias: bool = False  # bias of that convolution (True in Vanilla VMamba)
    act: Activation = "silu"  # activation after the convolution (and on the gate z)
    gated: bool = False  # Vanilla VMamba's gate: in_proj gives (x, z), output is y * act(z)
    init: Init = "mamba"  # initialization of A, D and the step-size projection
    dt_min: float = 0.001  # mamba init: softplus(dt_bias) is log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # mamba init: step sizes are clamped below at this value
    dt_scale: float = 1.0  # mamba init: dt_proj weights are U(-s/sqrt(r), s/sqrt(r))

    def __post_init__(self) -> None:
        if self.d_state < 1:
            raise ValueError(f"SS2DConfig.d_state must be >= 1, got {self.d_state}")
        _check_real("SS2DConfig", "ssm_ratio", self.ssm_ratio, 0.0, low_open=True)
        for name in ("dt_min", "dt_max", "dt_init_floor"):
            _check_real("SS2DConfig", name, getattr(self, name), 0.0, low_open=True)
        _check_real("SS2DConfig", "dt_scale", self.dt_scale, 0.0)
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ValueError(f"SS2DConfig.dt_rank must be >= 1 or None, got {self.dt_rank}")
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ValueError(f"SS2DConfig.d_conv must be a positive odd size, got {self.d_conv}")
        _check_choice("SS2DConfig", "act", self.act, get_args(Activation))
        _check_choice("SS2DConfig", "init", self.init, get_args(Init))
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"SS2DConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}"
            )

    def inner_dim(self, c: int) -> int:
        """d for a stage of width c."""
        return int(self.ssm_ratio * c)

    def rank(self, c: int) -> int:
        """r for a stage of width c ("auto" = ceil(c / 16))."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(c / 16)


@dataclass(frozen=True)
class VMambaConfig:
    """The whole network: stem, four stages of VSS blocks with downsampling, classifier."""

    depths: tuple[int, ...] = (2, 2, 8, 2)  # VSS blocks per stage
    dims: tuple[int, ...] = (96, 192, 384, 768)  # c of each stage
    ssm: SS2DConfig = field(default_factory=SS2DConfig)
    mlp_ratio: float = 4.0  # hidden width of the MLP is mlp_ratio * c; 0 = no MLP branch
    drop_path_rate: float = 0.2  # stochastic depth, linear from 0 over all blocks
    num_classes: int = 1000  # 0 = no head (forward returns pooled features)
    in_chans: int = 3
    stem: Stem = "conv2"
    downsample: Downsample = "conv"
    norm_eps: float = 1e-5  # LayerNorm epsilon everywhere

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.dims) or not self.depths:
            raise ValueError(
                f"VMambaConfig.depths and dims need one entry per stage, got "
                f"{len(self.depths)} depths and {len(self.dims)} dims"
            )
        if any(depth < 0 for depth in self.depths) or any(c < 1 for c in self.dims):
            raise ValueError(f"VMambaConfig: bad depths {self.depths} or dims {self.dims}")
        if self.stem == "conv2" and self.dims[0] % 2:
            raise ValueError(f"VMambaConfig: the conv2 stem needs an even dims[0], got {self.dims[0]}")
        _check_real("VMambaConfig", "mlp_ratio", self.mlp_ratio, 0.0)
        _check_real("VMambaConfig", "drop_path_rate", self.drop_path_rate, 0.0, 1.0)
        _check_real("VMambaConfig", "norm_eps", self.norm_eps, 0.0, low_open=True)
        if self.num_classes < 0 or self.in_chans < 1:
            raise ValueError(
                f"VMambaConfig: need num_classes >= 0 and in_chans >= 1, got "
                f"{self.num_classes}, {self.in_chans}"
            )
        _check_choice("VMambaConfig", "stem", self.stem, get_args(Stem))
        _check_choice("VMambaConfig", "downsample", self.downsample, get_args(Downsample))
        if not isinstance(self.ssm, SS2DConfig):
            raise TypeError(f"VMambaConfig.ssm must be an SS2DConfig, got {type(self.ssm).__name__}")
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "dims", tuple(self.dims))
