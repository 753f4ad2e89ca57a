"""Claims of save_checkpoint / load_model (vmamba_ref/checkpoint.py): a saved file carries its
config as plain data, rebuilds the same model on its own, and any mismatch is reported by key
name with the expected and found shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vmamba_ref import CheckpointMismatchError, SS2DConfig, vmamba_mini
from vmamba_ref.checkpoint import (
    config_from_dict,
    config_to_dict,
    load_model,
    read_saved,
    save_checkpoint,
)
from vmamba_ref.tools.train import TrainConfig


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return vmamba_mini(in_chans=1, num_classes=7, ssm=SS2DConfig(init="zero", act="gelu", d_state=2)).eval()


def test_round_trip_rebuilds_the_same_model_from_the_file_alone(tmp_path, model):
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    optimizer.step()
    path = save_checkpoint(model, tmp_path / "run" / "ckpt.pt", optimizer=optimizer.state_dict(), epoch=3, train=TrainConfig(epochs=5))
    assert path.is_file() and not list(tmp_path.rglob("*.partial"))

    raw = torch.load(path, weights_only=True)  # plain data only: no pickled classes
    assert raw["config"] == config_to_dict(model.config) and isinstance(raw["config"], dict)
    assert raw["epoch"] == 3 and raw["train"] == dataclasses.asdict(TrainConfig(epochs=5))
    assert raw["optimizer"]["state"][0]["step"] == 1

    loaded = load_model(path).eval()
    assert loaded.config == model.config and loaded.backend == "ref"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_model(path, backend="torch").backend == "torch"


def test_a_reset_head_is_rebuilt_from_the_saved_config(tmp_path, model):
    model.reset_classifier(3)
    loaded = load_model(save_checkpoint(model, tmp_path / "ckpt.pt"))
    assert loaded.config.num_classes == 3 and loaded.get_classifier().out_features == 3


def test_mismatches_are_reported_by_key_with_expected_and_found_shapes(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    checkpoint = read_saved(path)
    del checkpoint["checksums"]  # a hand-edited file: its tensors no longer match the saved sha256s
    checkpoint["config"]["num_classes"] = 5  # the file's head has 7 rows
    del checkpoint["model"]["layers.0.blocks.0.norm.weight"]
    checkpoint["model"]["extra.weight"] = torch.zeros(1)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_model(path)
    report = error.value.report
    assert ("classifier.head.weight", (5, 128), (7, 128)) in report.mismatched
    assert ("classifier.head.bias", (5,), (7,)) in report.mismatched
    assert report.missing == ["layers.0.blocks.0.norm.weight"] and report.unexpected == ["extra.weight"]
    message = str(error.value)
    assert "shape of classifier.head.weight: model expects (5, 128), checkpoint has (7, 128)" in message
    assert "missing in checkpoint: layers.0.blocks.0.norm.weight" in message
    assert "unexpected in checkpoint: extra.weight" in message


def test_files_without_a_saved_config_are_refused_with_directions(tmp_path, model):
    bare = tmp_path / "bare.pt"
    torch.save({"model": model.state_dict()}, bare)  # an official-style file without our config
    with pytest.raises(ValueError, match="no `config` dict.*load_checkpoint"):
        load_model(bare)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": model.state_dict(), "config": TrainConfig()}, pickled)  # a pickled object
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_model(pickled)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


def test_save_refuses_what_would_not_load_with_weights_only(tmp_path, model):
    with pytest.raises(ValueError, match=r"\['config'\]"):
        save_checkpoint(model, tmp_path / "a.pt", config={})
    with pytest.raises(TypeError, match=r"extra entry 'hook'\[0\] is a builtin_function_or_method"):
        save_checkpoint(model, tmp_path / "b.pt", hook=[print])
    with pytest.raises(TypeError, match="VMambaConfig"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())


def test_config_dicts_round_trip_and_unknown_fields_are_named(model):
    data = config_to_dict(model.config)
    assert config_from_dict(data) == model.config
    with pytest.raises(ValueError, match=r"\['depthz'\]"):
        config_from_dict({**data, "depthz": (1,)})
    with pytest.raises(ValueError, match=r"config\['ssm'\] has fields \['state'\]"):
        config_from_dict({**data, "ssm": {**data["ssm"], "state": 3}})
    with pytest.raises(ValueError, match="d_state"):
        config_from_dict({**data, "ssm": {**data["ssm"], "d_state": 0}})
