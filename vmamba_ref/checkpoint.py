"""Loading official VMamba checkpoints, with every mismatch reported by key name.

Official training checkpoints are dicts holding `model` (and `model_ema` when EMA was on) beside
the optimizer state and a pickled config; a bare state_dict is accepted too. Keys of the legacy
layout are renamed first (official `VSSM._load_from_state_dict`): `patch_embed.proj` ->
`patch_embed.0`, `patch_embed.norm` -> `patch_embed.2`, `.ln_1` -> `.norm`, `.self_attention` ->
`.op`, top-level `norm` / `head` -> `classifier.norm` / `classifier.head`. 1x1 convolution
weights (out, in, 1, 1) are accepted for the linear layers.

This package's own checkpoints (`save_checkpoint`) hold `model` (the state_dict) and `config`
(the VMambaConfig as plain nested dicts), beside whatever the caller adds (optimizer state,
epoch, ...), and `checksums`: the sha256 of every tensor in the file (its dtype, shape and
bytes), keyed by where the tensor sits (`model['classifier.head.weight']`). Reading verifies
them, so a flipped bit in tensor data is an error naming the file and the tensor. Everything in
them loads with `torch.load(..., weights_only=True)`, and `load_model(path)` rebuilds the model
from the file alone. Saves are atomic: a unique temporary file in the target folder, fsynced,
renamed over the target, and the folder fsynced; a failed save leaves nothing behind.

Reading tells three failures apart: a damaged or non-checkpoint file (CheckpointCorruptError,
with the underlying reason), a file that pickles objects beyond plain data (the `trust_pickle`
question), and a file that does not fit the model (CheckpointMismatchError). Loading is all or
nothing: every check runs before the first tensor is copied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vmamba_ref.config import SS2DConfig, VMambaConfig
from vmamba_ref.model import VMamba

Entry = Literal["auto", "model", "model_ema"]

_LEGACY_RENAMES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"\.ln_1\."), ".norm."),
    (re.compile(r"\.self_attention\."), ".op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists every key that differs."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(f"checkpoint does not match the model:\n{report}")
        self.report = report


class CheckpointCorruptError(ValueError):
    """A checkpoint file is damaged (empty, truncated, not a torch file, a failed zip CRC or a
    tensor whose sha256 differs from the one saved with it); the message names the file, the
    tensor or archive member where known, and the underlying reason."""


@dataclass
class LoadReport:
    """What a load found: keys the model has but the checkpoint lacks, keys only the checkpoint
    has, keys whose shapes differ as (key, expected, found), and keys whose values cannot be
    copied into the model's tensor (a non-tensor, or a float/complex/integer kind that differs)
    as (key, expected dtype, found)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    mismatched_dtype: list[tuple[str, str, str]] = field(default_factory=list)
    entry: str = "state_dict"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.mismatched_dtype)

    def __str__(self) -> str:
        lines = [f"from entry {self.entry!r}: " + ("all keys match" if self.ok else "mismatches")]
        lines += [f"  missing in checkpoint: {k}" for k in self.missing]
        lines += [f"  unexpected in checkpoint: {k}" for k in self.unexpected]
        lines += [f"  shape of {k}: model expects {e}, checkpoint has {f}" for k, e, f in self.mismatched]
        lines += [f"  dtype of {k}: model expects {e}, checkpoint has {f}" for k, e, f in self.mismatched_dtype]
        return "\n".join(lines)


CHECKSUMS = "checksums"  # the entry of save_checkpoint's files holding each tensor's sha256


def _tensors(value: object, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists/tuples, with where it sits (`model['w']`)."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensors(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{where}[{i}]")


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (row-major, as stored)."""
    digest = hashlib.sha256(f"{tensor.dtype} {tuple(tensor.shape)} ".encode())
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # (numel,)
    digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _checksums(checkpoint: Mapping) -> dict[str, str]:
    return {where: tensor_sha256(t) for key, v in checkpoint.items() if key != CHECKSUMS for where, t in _tensors(v, key)}


def _verify_checksums(checkpoint: Mapping, path: Path, who: str) -> None:
    """Compare every tensor of a save_checkpoint file with the sha256 saved beside it."""
    saved = checkpoint[CHECKSUMS]
    if not isinstance(saved, Mapping):
        raise CheckpointCorruptError(f"{who}: {path} is damaged: its `{CHECKSUMS}` entry is a {type(saved).__name__}, not a dict")
    found = {where: t for key, v in checkpoint.items() if key != CHECKSUMS for where, t in _tensors(v, key)}
    for where in sorted(set(saved) - set(found)):
        raise CheckpointCorruptError(f"{who}: {path} is damaged: tensor {where} has a saved sha256 but is not in the file")
    for where, tensor in found.items():
        if where not in saved:
            raise CheckpointCorruptError(f"{who}: {path} is damaged: tensor {where} has no saved sha256")
        if tensor_sha256(tensor) != saved[where]:
            raise CheckpointCorruptError(
                f"{who}: {path} is damaged: tensor {where} does not match the sha256 saved with it "
                "(its bytes changed after saving)"
            )


def _zip_damage(path: Path) -> str | None:
    """Why `path` fails as a zip archive (a member whose CRC differs, a broken directory), or
    None when it is a sound one."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"{type(error).__name__}: {error}"
    return None if bad is None else f"archive member {bad} fails its CRC check"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else '(no message)'}"


def _load_file(path: Path, weights_only: bool, who: str, pickle_advice: str) -> object:
    """`torch.load` of `path` on the CPU, telling a damaged file from a pickle question.

    A file that loads is checked further: against its saved sha256 checksums when it has them
    (save_checkpoint's files), else against its zip CRCs (torch does not check them itself)."""
    if not path.is_file():
        raise FileNotFoundError(f"{who}: no checkpoint file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointCorruptError(f"{who}: {path} is empty (0 bytes); it is not a checkpoint")
    is_zip = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        damage = _zip_damage(path) if is_zip else "not a zip archive"
        if weights_only and damage is None and "Weights only load failed" in str(error):
            raise ValueError(f"{who}: {path} {pickle_advice}") from error
        raise CheckpointCorruptError(
            f"{who}: {path} is damaged or not a torch checkpoint ({damage}): {_first_line(error)}"
        ) from error
    except Exception as error:  # torch raises RuntimeError, EOFError, IndexError, ... on damaged files
        damage = (_zip_damage(path) if is_zip else None) or "not a zip archive"
        raise CheckpointCorruptError(
            f"{who}: {path} is damaged or not a torch checkpoint ({damage}): {_first_line(error)}"
        ) from error
    if isinstance(loaded, Mapping) and CHECKSUMS in loaded:
        _verify_checksums(loaded, path, who)
    elif is_zip:
        damage = _zip_damage(path)
        if damage is not None:
            raise CheckpointCorruptError(f"{who}: {path} is damaged: {damage}")
    return loaded


def read_checkpoint(source: str | Path | Mapping, entry: Entry = "auto", trust_pickle: bool = False) -> tuple[dict, str]:
    """Return (state_dict, entry name) from a file path or an already loaded dict.

    `entry="auto"` takes `model`, else the dict itself. Official training checkpoints pickle a
    yacs config; reading them needs `trust_pickle=True` (only for files you trust) and yacs.
    """
    if isinstance(source, (str, Path)):
        source = _load_file(
            Path(source), not trust_pickle, "read_checkpoint",
            "holds pickled objects beyond tensors (official training checkpoints pickle their "
            "config); pass trust_pickle=True for a file you trust",
        )
    if not isinstance(source, Mapping):
        raise TypeError(f"read_checkpoint: expected a path or a dict, got {type(source).__name__}")
    if entry == "auto":
        entry = "model" if "model" in source else "state_dict"
    if entry in ("model", "model_ema"):
        if entry not in source:
            raise KeyError(f"read_checkpoint: no entry {entry!r}; the checkpoint has {sorted(source)}")
        state = source[entry]
    elif entry == "state_dict":
        state = source
    else:
        raise ValueError(f"read_checkpoint: entry must be 'auto', 'model' or 'model_ema', got {entry!r}")
    return {_rename_legacy(k): v for k, v in state.items()}, entry


def _rename_legacy(key: str) -> str:
    for pattern, new in _LEGACY_RENAMES:
        key = pattern.sub(new, key)
    return key


def _kind(dtype: torch.dtype) -> str:
    return "complex" if dtype.is_complex else "floating" if dtype.is_floating_point else "integer"


def _linear_weights(model: nn.Module) -> set[str]:
    """Keys of the linear layers' (out, in) weights: those that may come as (out, in, 1, 1)."""
    return {f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def convert_state_dict(model: nn.Module, state: Mapping[str, object], entry: str = "state_dict") -> tuple[dict, LoadReport]:
    """`state` as the model will load it, and how it differs from `model.state_dict()`.

    A linear layer's weight given as a 1x1 convolution's (out, in, 1, 1) becomes (out, in); any
    other key must have the model's exact shape and a dtype of the same kind (floating, complex
    or integer; the precision may differ). The converted dict holds only the keys that fit."""
    expected = model.state_dict()
    linear = _linear_weights(model)
    report = LoadReport(entry=entry)
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    converted = {}
    for k, t in state.items():
        if k not in expected:
            continue
        want = expected[k]
        if not isinstance(t, torch.Tensor):
            report.mismatched_dtype.append((k, str(want.dtype), type(t).__name__))
            continue
        if k in linear and t.dim() == 4 and t.shape[2:] == (1, 1) and t.shape[:2] == want.shape:
            t = t[:, :, 0, 0]  # (out, in, 1, 1) -> (out, in)
        if t.shape != want.shape:
            report.mismatched.append((k, tuple(want.shape), tuple(t.shape)))
        elif _kind(t.dtype) != _kind(want.dtype):
            report.mismatched_dtype.append((k, str(want.dtype), str(t.dtype)))
        else:
            converted[k] = t
    return converted, report


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], entry: str = "state_dict") -> LoadReport:
    """Report how `state` differs from `model.state_dict()` by key, shape and dtype kind."""
    return convert_state_dict(model, state, entry)[1]


def load_checkpoint(
    model: nn.Module,
    source: str | Path | Mapping,
    entry: Entry = "auto",
    strict: bool = True,
    trust_pickle: bool = False,
) -> LoadReport:
    """Load an official (or own) checkpoint into `model` and return the report.

    All or nothing: the whole state is read, converted and checked (`convert_state_dict`)
    before the first tensor is copied. With `strict`, any missing, unexpected, mis-shaped or
    mis-typed key raises CheckpointMismatchError naming them all, and the model is untouched.
    Without it, exactly the keys that fit are loaded.
    """
    state, entry_used = read_checkpoint(source, entry, trust_pickle)
    converted, report = convert_state_dict(model, state, entry_used)
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    model.load_state_dict(converted, strict=strict)
    return report


RESERVED_KEYS = ("model", "config", CHECKSUMS)  # what save_checkpoint writes itself


def config_to_dict(config: VMambaConfig) -> dict:
    """The config as plain nested dicts (tuples stay tuples), for a weights_only checkpoint."""
    if not isinstance(config, VMambaConfig):
        raise TypeError(f"config_to_dict: config must be a VMambaConfig, got {type(config).__name__}")
    return dataclasses.asdict(config)


def _check_fields(cls: type, data: Mapping, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where} has fields {unknown} that {cls.__name__} does not know; known: {sorted(known)}")


def config_from_dict(data: Mapping) -> VMambaConfig:
    """Rebuild a VMambaConfig from `config_to_dict`'s output; unknown fields raise, naming them,
    and the config's own checks run on the values."""
    if not isinstance(data, Mapping):
        raise TypeError(f"config_from_dict: expected a dict, got {type(data).__name__}")
    _check_fields(VMambaConfig, data, "config")
    fields = dict(data)
    ssm = fields.pop("ssm", {})
    if not isinstance(ssm, Mapping):
        raise TypeError(f"config_from_dict: config['ssm'] must be a dict, got {type(ssm).__name__}")
    _check_fields(SS2DConfig, ssm, "config['ssm']")
    return VMambaConfig(ssm=SS2DConfig(**ssm), **fields)


_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device, torch.Size)


def _plain(value: object, where: str) -> object:
    """`value` with dataclasses turned into dicts; raise TypeError for anything that
    `torch.load(weights_only=True)` would refuse, naming where it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"save_checkpoint: {where} is a {type(value).__name__}; a checkpoint holds only tensors, "
        "numbers, strings, None, dataclasses and dicts/lists/tuples of them (so that it loads "
        "with weights_only=True)"
    )


def save_checkpoint(model: nn.Module, path: str | Path, **extra: object) -> Path:
    """Write `model`'s weights and config, and `extra` entries, to `path`; return the path.

    The file holds `model` (the state_dict), `config` (`config_to_dict(model.config)`) and each
    keyword of `extra` (optimizer state, epoch, ...; dataclasses become dicts), and the sha256
    of every tensor (`checksums`). It is written to a unique temporary file in the same folder,
    fsynced, renamed over `path` and the folder fsynced: an interrupted or failed save leaves the
    previous file intact and no temporary file behind, and saves racing to one path each leave a
    whole file (the last rename wins). `load_model(path)` rebuilds the model; `load_checkpoint`
    loads the weights into one.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, VMambaConfig):
        raise TypeError(
            f"save_checkpoint: model must carry a VMambaConfig in `.config` (a VMamba), got "
            f"{type(model).__name__} with config {type(config).__name__}"
        )
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"save_checkpoint: extra entries may not be named {clash}; the checkpoint writes those itself")
    checkpoint = {
        "model": model.state_dict(),
        "config": config_to_dict(config),
        **{k: _plain(v, f"extra entry {k!r}") for k, v in extra.items()},
    }
    checkpoint[CHECKSUMS] = _checksums(checkpoint)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.chmod(partial, _new_file_mode(path))  # mkstemp creates 0600; a save gets the usual mode
        with os.fdopen(descriptor, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _new_file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give: the old file's, else 0666 less the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = 0o022
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; Windows cannot open a folder, nor needs to)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_saved(path: str | Path) -> dict:
    """The whole checkpoint written by `save_checkpoint` (weights_only load, CPU tensors), its
    tensors verified against their saved sha256 checksums."""
    path = Path(path)
    checkpoint = _load_file(
        path, True, "read_saved",
        "holds pickled objects beyond plain data, so it was not written by save_checkpoint "
        "(official training checkpoints pickle a yacs config): build the model with its named "
        "constructor and use load_checkpoint(model, path, trust_pickle=True)",
    )
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("config"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"read_saved: {path} holds no `config` dict (found {found}); it was not written by "
            "save_checkpoint: build the model with its named constructor and use load_checkpoint"
        )
    return dict(checkpoint)


def load_model(path: str | Path, backend: str = "ref", entry: Entry = "model", strict: bool = True) -> nn.Module:
    """Rebuild the VMamba saved by `save_checkpoint` from its config and load its weights.

    `backend` picks the scan implementation (it is not part of the architecture). With `strict`,
    any key the rebuilt model and the file disagree on raises CheckpointMismatchError naming
    each key with the expected and found shapes.
    """
    checkpoint = read_saved(path)
    model = VMamba(config_from_dict(checkpoint["config"]), backend=backend)
    load_checkpoint(model, checkpoint, entry=entry, strict=strict)
    return model
