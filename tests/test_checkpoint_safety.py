"""Claims of vmamba_ref/checkpoint.py about safety: a load is all or nothing, a broken or
damaged file is reported as broken (never as a pickle question), the package's own files carry
sha256 checksums of their tensors that loading verifies, and saves are atomic even when several
run at once. Also the config checks of vmamba_ref/config.py on impossible values."""

from __future__ import annotations

import math
import multiprocessing
import threading

import pytest
import torch

from vmamba_ref import (
    CheckpointMismatchError,
    SS2DConfig,
    VMambaConfig,
    load_checkpoint,
    vmamba_mini,
)
from vmamba_ref.checkpoint import (
    CheckpointCorruptError,
    load_model,
    read_checkpoint,
    read_saved,
    save_checkpoint,
)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return vmamba_mini(in_chans=1, num_classes=10).eval()


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"a failed load changed {len(changed)} tensors, e.g. {changed[:3]}"


# --- 1. all or nothing -------------------------------------------------------------------------


def test_a_conv_shaped_tensor_where_no_linear_weight_lives_fails_before_any_copy(model):
    torch.manual_seed(1)
    source = vmamba_mini(in_chans=1, num_classes=10).state_dict()
    key = "layers.3.blocks.0.op.A_logs"  # 2-D, but a parameter, not a linear layer's weight
    source[key] = source[key][:, :, None, None]  # (k*d, n, 1, 1)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError, match="A_logs"):
        load_checkpoint(model, source)
    assert_unchanged(model, before)


def test_a_wrong_dtype_kind_fails_before_any_copy(model):
    source = {k: v.clone() + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    source["layers.3.blocks.0.op.Ds"] = torch.ones_like(source["layers.3.blocks.0.op.Ds"], dtype=torch.complex64)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError, match=r"dtype of layers\.3\.blocks\.0\.op\.Ds"):
        load_checkpoint(model, source)
    assert_unchanged(model, before)


def test_a_conv_shaped_head_weight_loads(model):
    torch.manual_seed(1)
    source = vmamba_mini(in_chans=1, num_classes=10).state_dict()
    head = source["classifier.head.weight"]
    source["classifier.head.weight"] = head[:, :, None, None]  # (out, in, 1, 1): a linear layer's weight
    assert load_checkpoint(model, source).ok
    assert torch.equal(model.classifier.head.weight, head)


# --- 2. broken and damaged files ---------------------------------------------------------------


def _broken_files(tmp_path, model):
    good = save_checkpoint(model, tmp_path / "good.pt").read_bytes()
    files = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "random": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes(),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("name", ["truncated", "empty", "random"])
@pytest.mark.parametrize("reader", ["read_checkpoint", "read_saved", "load_model"])
def test_broken_files_are_reported_as_broken_not_as_pickle(tmp_path, model, name, reader):
    path = _broken_files(tmp_path, model)[name]
    read = {"read_checkpoint": read_checkpoint, "read_saved": read_saved, "load_model": load_model}[reader]
    with pytest.raises(CheckpointCorruptError) as error:
        read(path)
    message = str(error.value)
    assert str(path) in message and "trust_pickle" not in message
    assert ("empty" in message) if name == "empty" else ("damaged" in message)


def _flip_a_bit_in(path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = bytes(data).find(tensor.contiguous().numpy().tobytes())
    assert at >= 0, "the tensor's bytes are not stored as they are"
    data[at + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reader", ["read_checkpoint", "read_saved", "load_model"])
def test_a_flipped_bit_in_tensor_data_is_caught_and_the_tensor_named(tmp_path, model, reader):
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    key = "classifier.head.weight"
    _flip_a_bit_in(path, model.state_dict()[key])
    read = {"read_checkpoint": read_checkpoint, "read_saved": read_saved, "load_model": load_model}[reader]
    with pytest.raises(CheckpointCorruptError, match=rf"{path}.*{key}.*sha256"):
        read(path)


def test_a_flipped_bit_in_a_file_without_checksums_fails_its_zip_crc(tmp_path, model):
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, path)  # official-style: no checksums
    _flip_a_bit_in(path, model.state_dict()["classifier.head.weight"])
    with pytest.raises(CheckpointCorruptError, match="CRC"):
        read_checkpoint(path)


def test_a_pickled_file_is_still_a_pickle_question(tmp_path, model):
    path = tmp_path / "pickled.pth"
    torch.save({"model": model.state_dict(), "config": _Config()}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        read_checkpoint(path)


class _Config:
    """Stands in for the pickled yacs config of official training checkpoints."""


# --- 2. atomic, concurrent saves ---------------------------------------------------------------


def test_a_failed_save_leaves_nothing_behind_and_the_old_file_intact(tmp_path, model, monkeypatch):
    path = save_checkpoint(model, tmp_path / "ckpt.pt")
    old = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert path.read_bytes() == old


def _save_many(path: str, seed: int, times: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    module = vmamba_mini(in_chans=1, num_classes=10)
    for i in range(times):
        save_checkpoint(module, path, writer=seed, round=i)


def test_concurrent_saves_to_one_path_never_fail_or_corrupt(tmp_path):
    path = tmp_path / "shared.pt"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_save_many, args=(str(path), seed, 4)) for seed in range(3)]
    threads = [threading.Thread(target=_save_many, args=(str(path), seed, 4)) for seed in (10, 11)]
    for worker in (*processes, *threads):
        worker.start()
    for worker in (*processes, *threads):
        worker.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.pt"]
    checkpoint = read_saved(path)  # verifies every checksum
    assert checkpoint["writer"] in (0, 1, 2, 10, 11) and checkpoint["round"] == 3
    load_model(path)


# --- 5. config values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("norm_eps", 0.0), ("norm_eps", -1e-5), ("norm_eps", math.nan), ("norm_eps", math.inf),
        ("mlp_ratio", -1.0), ("mlp_ratio", math.nan), ("mlp_ratio", math.inf),
        ("drop_path_rate", 1.0), ("drop_path_rate", -0.1), ("drop_path_rate", math.nan),
    ],
)
def test_vmamba_config_refuses_impossible_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"VMambaConfig\.{field}"):
        VMambaConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ssm_ratio", 0.0), ("ssm_ratio", math.nan), ("ssm_ratio", math.inf),
        ("dt_min", math.nan), ("dt_max", math.inf), ("dt_init_floor", -1.0), ("dt_init_floor", math.nan),
        ("dt_scale", math.nan), ("dt_scale", -1.0),
    ],
)
def test_ss2d_config_refuses_impossible_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SS2DConfig\.{field}"):
        SS2DConfig(**{field: value})
