"""Claims of vmamba_ref/model.py and ss2d.py: exact parameter counts and checkpoint keys of the
released models, gradients everywhere, the projection order, stochastic depth, and input
checks."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vmamba_ref import (
    MODELS,
    SS2D,
    BackendUnavailableError,
    SS2DConfig,
    VMamba,
    VMambaConfig,
    cross_merge,
    cross_scan,
    selective_scan,
    vmamba_mini,
    vmamba_tiny,
)
from vmamba_ref.layers import DropPath
from vmamba_ref.model import PatchMerging2d
from vmamba_ref.testing.tolerances import FLOAT64_REWRITE

PARAMETERS = {
    "vmamba_tiny": 30_249_064,
    "vmamba_small": 50_147_752,
    "vmamba_base": 88_557_800,
    "vmamba_vanilla_tiny": 22_893_448,
    "vmamba_vanilla_small": 44_417_416,
    "vmamba_vanilla_base": 76_254_056,
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return vmamba_tiny().eval()


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_parameter_counts_match_the_released_models(name):
    with torch.device("meta"):
        model = MODELS[name]()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


def test_tiny_state_dict_has_the_official_keys_and_shapes(tiny):
    sd = tiny.state_dict()
    assert len(sd) == 276
    expected = {
        "patch_embed.0.weight": (48, 3, 3, 3), "patch_embed.2.weight": (48,),
        "patch_embed.5.weight": (96, 48, 3, 3), "patch_embed.7.bias": (96,),
        "layers.0.blocks.0.op.x_proj_weight": (4, 8, 96), "layers.1.blocks.1.op.x_proj_weight": (4, 14, 192),
        "layers.2.blocks.7.op.x_proj_weight": (4, 26, 384), "layers.3.blocks.0.op.x_proj_weight": (4, 50, 768),
        "layers.2.blocks.0.op.A_logs": (1536, 1), "layers.3.blocks.1.op.Ds": (3072,),
        "layers.3.blocks.1.op.dt_projs_weight": (4, 768, 48), "layers.0.blocks.0.op.dt_projs_bias": (4, 96),
        "layers.0.blocks.0.op.out_norm.weight": (96,), "layers.0.blocks.0.op.in_proj.weight": (96, 96),
        "layers.0.blocks.0.op.conv2d.weight": (96, 1, 3, 3), "layers.0.blocks.0.op.out_proj.weight": (96, 96),
        "layers.0.blocks.0.norm2.weight": (96,), "layers.0.blocks.0.mlp.fc1.weight": (384, 96),
        "layers.0.blocks.0.mlp.fc2.weight": (96, 384), "layers.0.downsample.1.weight": (192, 96, 3, 3),
        "layers.2.downsample.3.weight": (768,), "classifier.norm.weight": (768,),
        "classifier.head.weight": (1000, 768), "classifier.head.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layers.0.blocks.0.op.conv2d.bias" not in sd and "layers.3.downsample.1.weight" not in sd
    block = [k.removeprefix("layers.0.blocks.0.") for k in sd if k.startswith("layers.0.blocks.0.")]
    assert block[:10] == ["norm.weight", "norm.bias", "op.x_proj_weight", "op.A_logs", "op.Ds",
                          "op.dt_projs_weight", "op.dt_projs_bias", "op.out_norm.weight",
                          "op.out_norm.bias", "op.in_proj.weight"]


def test_vanilla_tiny_has_the_official_keys():
    with torch.device("meta"):
        sd = MODELS["vmamba_vanilla_tiny"]().state_dict()
    assert len(sd) == 212
    assert tuple(sd["patch_embed.0.weight"].shape) == (96, 3, 4, 4)
    assert tuple(sd["layers.0.blocks.0.op.x_proj_weight"].shape) == (4, 38, 192)
    assert tuple(sd["layers.0.blocks.0.op.A_logs"].shape) == (768, 16)
    assert tuple(sd["layers.0.blocks.0.op.in_proj.weight"].shape) == (384, 96)
    assert tuple(sd["layers.0.blocks.0.op.conv2d.bias"].shape) == (192,)
    assert tuple(sd["layers.0.downsample.reduction.weight"].shape) == (192, 384)
    assert tuple(sd["layers.0.downsample.norm.weight"].shape) == (384,)
    assert not any(".mlp." in k or ".norm2." in k for k in sd)


def test_tiny_maps_a_224_batch_to_finite_logits(tiny):
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


@pytest.mark.parametrize("vanilla", [False, True])
def test_every_parameter_receives_a_gradient(vanilla):
    torch.manual_seed(0)
    config = VMambaConfig(depths=(1, 2), dims=(16, 32), num_classes=5, drop_path_rate=0.1)
    if vanilla:
        config = VMambaConfig(
            depths=(1, 2), dims=(16, 32), num_classes=5, mlp_ratio=0.0, stem="patch",
            downsample="patch_merging", ssm=SS2DConfig(d_state=4, ssm_ratio=2.0, conv_bias=True, gated=True),
        )
    model = VMamba(config)
    model(torch.randn(2, 3, 20, 28)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip_is_exact():
    torch.manual_seed(0)
    a = vmamba_mini().eval()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    b = vmamba_mini().eval()
    b.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))


def test_projections_on_the_grid_equal_the_official_route_order():
    """SS2D projects on the grid, then scans; the official code scans, then projects. Same result."""
    torch.manual_seed(0)
    op = SS2D(8, SS2DConfig(d_state=3)).double()
    x = torch.randn(2, op.d, 5, 3, dtype=torch.float64)  # (b, d, h, w)
    xs = cross_scan(x)  # (b, k, d, l)
    x_dbl = torch.einsum("b k d l, k e d -> b k e l", xs, op.x_proj_weight)  # (b, k, r+2n, l)
    dts, Bs, Cs = torch.split(x_dbl, [op.r, op.n, op.n], dim=2)
    dts = torch.einsum("b k r l, k d r -> b k d l", dts, op.dt_projs_weight)  # (b, k, d, l)
    ys = selective_scan(
        xs.flatten(1, 2), dts.flatten(1, 2), -torch.exp(op.A_logs), Bs, Cs, op.Ds,
        op.dt_projs_bias.flatten(), delta_softplus=True,
    )  # (b, k*d, l)
    official = cross_merge(ys.view(2, 4, op.d, 5, 3))
    torch.testing.assert_close(op.scan(x), official, rtol=FLOAT64_REWRITE.rtol, atol=FLOAT64_REWRITE.atol)


def test_patch_merging_follows_swin_channel_last_order():
    torch.manual_seed(0)
    merge = PatchMerging2d(3, 5, eps=1e-5)
    x = torch.randn(2, 3, 4, 6)  # (b, c, h, w)
    xl = x.permute(0, 2, 3, 1)  # (b, h, w, c) as the official module sees it
    cat = torch.cat([xl[:, 0::2, 0::2], xl[:, 1::2, 0::2], xl[:, 0::2, 1::2], xl[:, 1::2, 1::2]], -1)
    cat = F.layer_norm(cat, (12,), merge.norm.weight, merge.norm.bias)
    expected = F.linear(cat, merge.reduction.weight).permute(0, 3, 1, 2)
    torch.testing.assert_close(merge(x), expected)


def test_stochastic_depth_rates_rise_linearly_over_all_blocks():
    with torch.device("meta"):
        model = vmamba_tiny()
    rates = [block.drop_path.p for layer in model.layers for block in layer.blocks]
    assert len(rates) == 14
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, 14))


class _MapOps(TorchDispatchMode):
    """Records the name of every operator whose output has `numel` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.names = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.names.append(func.__name__)
        return out


def test_drop_path_keeps_or_drops_whole_samples_in_one_multiply():
    """In training every sample of the branch is zero or scaled by 1 / (1 - p), about 1 - p of
    them kept, with one multiply over the map (a per-sample factor formed first); in evaluation
    the branch passes through untouched."""
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x = torch.randn(4000, 3, 2, 2).requires_grad_()
    with _MapOps(x.numel()) as forward:
        y = drop(x)
    assert forward.names == ["mul.Tensor"], forward.names
    grad = torch.ones_like(y)
    with _MapOps(x.numel()) as backward:
        y.backward(grad)
    arithmetic = [name for name in backward.names if name != "detach.default"]  # not the accumulation's
    assert arithmetic == ["mul.Tensor"], backward.names
    kept = y.detach().flatten(1).ne(0).any(1)  # (4000,)
    scale = torch.tensor(1 / 0.75, dtype=torch.float32)
    assert torch.equal(y.detach()[kept], x.detach()[kept] * scale)
    assert torch.equal(y.detach()[~kept], torch.zeros_like(x[~kept]))
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert drop.eval()(x) is x


def test_forward_head_pre_logits_and_no_head():
    model = vmamba_mini(num_classes=0).eval()
    x = torch.randn(1, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (1, 128, 1, 1)
    assert model(x).shape == (1, 128)
    assert vmamba_mini().forward_head(features, pre_logits=True).shape == (1, 128)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.randn(1, 1, 32, 32), ValueError, r"`x` must have shape \(b, in_chans=3, H, W\)"),
        (torch.randn(3, 32, 32), ValueError, r"`x` must have shape"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "`x` must have dtype"),
        (torch.full((1, 3, 32, 32), float("nan")), ValueError, "`x` must be finite"),
    ],
)
def test_bad_images_are_rejected_by_name(x, error, message):
    with pytest.raises(error, match=message):
        vmamba_mini()(x)


def test_unknown_backend_and_override_fail_loudly(monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of \['ref', 'numba', 'triton', 'torch'\]"):
        vmamba_mini(backend="cuda")
    with pytest.raises(TypeError, match="depthz"):
        vmamba_mini(depthz=(1, 1))
    import vmamba_ref.contract as contract

    monkeypatch.setattr(contract, "_LOADED", {})  # a process that has loaded no backend yet
    monkeypatch.setattr(contract, "INSTALLED", dict.fromkeys(contract.INSTALLED, False))
    with pytest.raises(BackendUnavailableError, match=r"pip install 'vmamba\[numba\]'"):
        vmamba_mini(backend="numba")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(depths=(1, 1), dims=(8,)), "one entry per stage"),
        (dict(stem="v2"), r"VMambaConfig.stem must be one of \['conv2', 'patch'\]"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(dims=(15, 30), depths=(1, 1)), "even dims"),
    ],
)
def test_config_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        VMambaConfig(**fields)
