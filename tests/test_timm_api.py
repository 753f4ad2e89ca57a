"""Claims of VMamba's timm-style API (vmamba_ref/model.py): stage maps with the documented shapes,
classifier reset, features-only mode, and registration with timm's create_model."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from vmamba_ref.model import (
    MODELS,
    VMambaFeatures,
    register_timm_models,
    timm_entrypoint,
    vmamba_mini,
    vmamba_tiny,
)


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return vmamba_mini(backend="torch").eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_vmamba_tiny_stage_maps_have_the_documented_shapes():
    """(b, c_i, H/4/2^i, W/4/2^i) at 224x224: 96 x 56^2, 192 x 28^2, 384 x 14^2, 768 x 7^2."""
    model = vmamba_tiny(backend="torch").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]
    assert torch.equal(final, maps[-1])  # the last stage has no downsampling after it
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [(96, 4), (192, 8), (384, 16), (768, 32)]


def test_stage_maps_are_the_block_outputs_before_downsampling(mini, images):
    seen = {}
    hooks = [
        layer.blocks.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o))
        for k, layer in enumerate(mini.layers)
    ]
    try:
        with torch.no_grad():
            maps = mini.forward_intermediates(images, intermediates_only=True)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        final, _ = mini.forward_intermediates(images)
        assert torch.equal(final, mini.forward_features(images))
    assert len(maps) == 4
    for k, stage_map in enumerate(maps):
        assert torch.equal(stage_map, seen[k])
        assert stage_map.shape == (2, mini.config.dims[k], 16 // 2**k, 16 // 2**k)


@pytest.mark.parametrize(
    "indices, expected",
    [(None, [0, 1, 2, 3]), (2, [2, 3]), ([0, 2], [0, 2]), ([-1, 0], [0, 3]), ((3,), [3])],
)
def test_indices_select_stages_in_order(mini, images, indices, expected):
    assert mini.stage_indices(indices) == expected
    with torch.no_grad():
        every = mini.forward_intermediates(images, intermediates_only=True)
        picked = mini.forward_intermediates(images, indices=indices, intermediates_only=True, stop_early=True)
    assert len(picked) == len(expected)
    for stage, stage_map in zip(expected, picked, strict=True):
        assert torch.equal(stage_map, every[stage])


@pytest.mark.parametrize("indices", [0, 5, [4], [], "all", [True]])
def test_bad_indices_raise_naming_the_argument(mini, indices):
    with pytest.raises(ValueError, match="indices"):
        mini.stage_indices(indices)


def test_norm_and_nhwc_options(mini, images):
    with torch.no_grad():
        plain = mini.forward_intermediates(images, intermediates_only=True)
        normed = mini.forward_intermediates(images, norm=True, intermediates_only=True)
        nhwc = mini.forward_intermediates(images, output_fmt="NHWC", intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(plain[:3], normed[:3], strict=True))
    torch.testing.assert_close(normed[3], mini.classifier.norm(plain[3]))
    assert all(torch.equal(a.permute(0, 2, 3, 1), b) for a, b in zip(plain, nhwc, strict=True))
    with pytest.raises(ValueError, match="output_fmt"):
        mini.forward_intermediates(images, output_fmt="NLC")


def test_reset_classifier_replaces_the_head_and_the_config():
    torch.manual_seed(0)
    model = vmamba_mini(backend="torch").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(5)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (128, 5)
    assert model.num_classes == 5 and model.config.num_classes == 5
    assert torch.count_nonzero(head.bias) == 0 and 0 < head.weight.std() < 0.05  # official init
    with torch.no_grad():
        torch.testing.assert_close(model(x), head(pooled))
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model.config.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_features_only_mode_returns_the_chosen_maps_and_drops_the_rest():
    torch.manual_seed(0)
    model = vmamba_mini(backend="torch").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
    features = VMambaFeatures(model, out_indices=(1, 2))
    with torch.no_grad():
        maps = features(x)
    assert len(maps) == 2 and all(torch.equal(a, b) for a, b in zip(maps, every[1:3], strict=True))
    assert [f["num_chs"] for f in features.feature_info] == [32, 64]
    assert len(features.model.layers) == 3  # the last stage is pruned
    assert isinstance(features.model.get_classifier(), nn.Identity)
    with pytest.raises(TypeError, match="VMamba"):
        VMambaFeatures(nn.Linear(2, 2))


def test_pretrained_cfg_describes_the_official_evaluation_transform(mini):
    cfg = mini.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bicubic" and cfg["classifier"] == "classifier.head"
    assert mini.default_cfg == cfg
    assert dict(mini.named_modules())[cfg["first_conv"]] is mini.patch_embed[0]


# ---------------------------------------------------------------- timm registration


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in for timm's registry with its register_model contract (it reads fn.__name__ and
    sys.modules[fn.__module__]) and create_model's call (None-valued kwargs dropped)."""
    registry = {}

    def register_model(fn):
        assert fn.__module__ in sys.modules
        registry[fn.__name__] = fn
        return fn

    def create_model(name, pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return registry[name](
            pretrained=pretrained, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs
        )

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    models.register_model, timm.create_model, timm.models = register_model, create_model, models
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.models", models)
    return timm, registry


def test_registration_hands_timm_every_named_constructor(fake_timm):
    timm, registry = fake_timm
    assert register_timm_models() == list(MODELS)
    assert sorted(registry) == sorted(MODELS)
    model = timm.create_model("vmamba_mini", num_classes=3, in_chans=1, drop_path_rate=None, backend="torch")
    assert model.config.num_classes == 3 and model.config.in_chans == 1 and model.backend == "torch"
    features = timm.create_model("vmamba_mini", features_only=True, out_indices=(0, 3))
    assert isinstance(features, VMambaFeatures) and features.out_indices == [0, 3]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("vmamba_mini", pretrained=True)
    with pytest.raises(TypeError, match="drop_rate"):
        timm.create_model("vmamba_mini", drop_rate=0.1)


def test_registration_without_timm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    monkeypatch.setitem(sys.modules, "timm.models", None)
    with pytest.raises(ImportError, match="pip install timm"):
        register_timm_models()
    with pytest.raises(ValueError, match="vmamba_mini"):
        timm_entrypoint("vmamba_huge")


def test_real_timm_creates_the_models():
    """Runs where timm (and torchvision) import; skipped where they do not, whatever the import
    raises: beside the CPU torch build, timm's import of a torchvision wheel built for another
    torch raises RuntimeError ("operator torchvision::nms does not exist"), not ImportError."""
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - any failed import means: no usable timm here
        pytest.skip(f"timm does not import here: {type(err).__name__}: {err}")
    register_timm_models()
    model = timm.create_model("vmamba_mini", num_classes=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
