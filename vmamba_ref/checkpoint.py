"""Loading official VMamba checkpoints, with every mismatch reported by key name.

Official training checkpoints are dicts holding `model` (and `model_ema` when EMA was on) beside
the optimizer state and a pickled config; a bare state_dict is accepted too. Keys of the legacy
layout are renamed first (official `VSSM._load_from_state_dict`): `patch_embed.proj` ->
`patch_embed.0`, `patch_embed.norm` -> `patch_embed.2`, `.ln_1` -> `.norm`, `.self_attention` ->
`.op`, top-level `norm` / `head` -> `classifier.norm` / `classifier.head`. 1x1 convolution
weights (out, in, 1, 1) are accepted for the linear layers.

This package's own checkpoints (`save_checkpoint`) hold `model` (the state_dict) and `config`
(the VMambaConfig as plain nested dicts), beside whatever the caller adds (optimizer state,
epoch, ...). Everything in them loads with `torch.load(..., weights_only=True)`, and
`load_model(path)` rebuilds the model from the file alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
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


@dataclass
class LoadReport:
    """What a load found: keys the model has but the checkpoint lacks, keys only the checkpoint
    has, and keys whose shapes differ as (key, expected, found)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    entry: str = "state_dict"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"from entry {self.entry!r}: " + ("all keys match" if self.ok else "mismatches")]
        lines += [f"  missing in checkpoint: {k}" for k in self.missing]
        lines += [f"  unexpected in checkpoint: {k}" for k in self.unexpected]
        lines += [f"  shape of {k}: model expects {e}, checkpoint has {f}" for k, e, f in self.mismatched]
        return "\n".join(lines)


def read_checkpoint(source: str | Path | Mapping, entry: Entry = "auto", trust_pickle: bool = False) -> tuple[dict, str]:
    """Return (state_dict, entry name) from a file path or an already loaded dict.

    `entry="auto"` takes `model`, else the dict itself. Official training checkpoints pickle a
    yacs config; reading them needs `trust_pickle=True` (only for files you trust) and yacs.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"read_checkpoint: no checkpoint file at {path}")
        try:
            source = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as error:  # torch raises UnpicklingError subclasses that vary by version
            if trust_pickle:
                raise
            raise ValueError(
                f"read_checkpoint: {path} holds pickled objects beyond tensors (official training "
                "checkpoints pickle their config); pass trust_pickle=True for a file you trust"
            ) from error
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


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], entry: str = "state_dict") -> LoadReport:
    """Report how `state` differs from `model.state_dict()` by key and shape."""
    expected = model.state_dict()
    report = LoadReport(entry=entry)
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    for k, t in state.items():
        if k in expected:
            found, want = tuple(t.shape), tuple(expected[k].shape)
            conv_1x1 = len(found) == 4 and found[2:] == (1, 1) and found[:2] == want
            if found != want and not conv_1x1:
                report.mismatched.append((k, want, found))
    return report


def load_checkpoint(
    model: nn.Module,
    source: str | Path | Mapping,
    entry: Entry = "auto",
    strict: bool = True,
    trust_pickle: bool = False,
) -> LoadReport:
    """Load an official (or own) checkpoint into `model` and return the report.

    With `strict`, any missing, unexpected or mis-shaped key raises CheckpointMismatchError
    naming them all, and nothing is loaded. Without it, the matching keys are loaded.
    """
    state, entry_used = read_checkpoint(source, entry, trust_pickle)
    report = compare_state_dict(model, state, entry_used)
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    bad = set(report.unexpected) | {k for k, _, _ in report.mismatched}
    model.load_state_dict({k: v for k, v in state.items() if k not in bad}, strict=strict)
    return report


RESERVED_KEYS = ("model", "config")  # what save_checkpoint writes itself


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
    keyword of `extra` (optimizer state, epoch, ...; dataclasses become dicts). It is written to
    a temporary file first and renamed, so an interrupted save leaves the previous file intact.
    `load_model(path)` rebuilds the model; `load_checkpoint` loads the weights into one.
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return path


def read_saved(path: str | Path) -> dict:
    """The whole checkpoint written by `save_checkpoint` (weights_only load, CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_saved: no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError subclasses that vary by version
        raise ValueError(
            f"read_saved: {path} holds pickled objects beyond plain data, so it was not written by "
            "save_checkpoint (official training checkpoints pickle a yacs config): build the model "
            "with its named constructor and use load_checkpoint(model, path, trust_pickle=True)"
        ) from error
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
