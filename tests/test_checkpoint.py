"""Claims of vmamba_ref/checkpoint.py: official checkpoint layouts load, and every mismatch is
reported by key name with both shapes."""

import pytest
import torch

from vmamba_ref import CheckpointMismatchError, load_checkpoint, vmamba_mini
from vmamba_ref.checkpoint import read_checkpoint


@pytest.fixture()
def source():
    torch.manual_seed(0)
    return vmamba_mini().eval()


def same_outputs(a, b):
    x = torch.randn(1, 3, 32, 32)
    return torch.equal(a(x), b(x))


@pytest.mark.parametrize("entry", ["model", "model_ema"])
def test_training_checkpoint_entries_load(tmp_path, source, entry):
    path = tmp_path / "ckpt.pth"
    torch.save({entry: source.state_dict(), "epoch": 3, "max_accuracy": 0.5}, path)
    target = vmamba_mini().eval()
    report = load_checkpoint(target, path, entry=entry)
    assert report.ok and report.entry == entry
    assert same_outputs(source, target)


def test_auto_prefers_model_and_accepts_a_bare_state_dict(source):
    target = vmamba_mini().eval()
    assert load_checkpoint(target, {"model": source.state_dict(), "model_ema": {}}).entry == "model"
    assert load_checkpoint(vmamba_mini(), source.state_dict()).entry == "state_dict"
    assert same_outputs(source, target)


def test_legacy_keys_and_conv_shaped_linear_weights_load(source):
    legacy = {}
    for key, value in source.state_dict().items():
        key = key.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        key = key.replace(".op.", ".self_attention.").replace("classifier.head.", "head.")
        if key.endswith("in_proj.weight"):
            value = value[:, :, None, None]  # (out, in, 1, 1)
        legacy[key] = value
    target = vmamba_mini().eval()
    assert load_checkpoint(target, legacy).ok
    assert same_outputs(source, target)


def test_mismatches_are_reported_by_key_with_both_shapes(source):
    state = source.state_dict()
    state["classifier.head.weight"] = torch.zeros(7, 128)
    del state["layers.0.blocks.0.op.Ds"]
    state["layers.9.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(vmamba_mini(), state)
    message = str(info.value)
    assert "missing in checkpoint: layers.0.blocks.0.op.Ds" in message
    assert "unexpected in checkpoint: layers.9.extra" in message
    assert "shape of classifier.head.weight: model expects (10, 128), checkpoint has (7, 128)" in message


def test_non_strict_load_keeps_what_matches(source):
    state = source.state_dict()
    state["classifier.head.weight"] = torch.zeros(7, 128)
    target = vmamba_mini()
    report = load_checkpoint(target, state, strict=False)
    assert [k for k, _, _ in report.mismatched] == ["classifier.head.weight"]
    assert torch.equal(target.patch_embed[0].weight, source.patch_embed[0].weight)


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="no entry 'model_ema'"):
        read_checkpoint({"model": {}}, entry="model_ema")
    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "config": _Config()}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        read_checkpoint(path)
    assert read_checkpoint(path, trust_pickle=True)[1] == "model"


class _Config:
    """Stands in for the pickled yacs config of official training checkpoints."""
