"""Loading official VMamba checkpoints, with every mismatch reported by key name.

Official training checkpoints are dicts holding `model` (and `model_ema` when EMA was on) beside
the optimizer state and a pickled config; a bare state_dict is accepted too. Keys of the legacy
layout are renamed first (official `VSSM._load_from_state_dict`): `patch_embed.proj` ->
`patch_embed.0`, `patch_embed.norm` -> `patch_embed.2`, `.ln_1` -> `.norm`, `.self_attention` ->
`.op`, top-level `norm` / `head` -> `classifier.norm` / `classifier.head`. 1x1 convolution
weights (out, in, 1, 1) are accepted for the linear layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

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
