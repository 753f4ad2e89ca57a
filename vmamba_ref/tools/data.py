"""Small real image data that ships inside a package: scikit-learn's digits (1,797 8x8 scans of
handwritten digits), upsampled for VMamba's stride-4 stem. No download is ever made."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Split:
    """Images (b, 1, size, size) float32, normalised to zero mean and unit variance, and labels (b,)."""

    images: torch.Tensor
    labels: torch.Tensor


def load_digits(size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's digits as (train, test), stratified by a seeded shuffle, bilinearly upsampled
    from 8x8 to `size` x `size`. Needs scikit-learn (`pip install 'vmamba[demo]'`)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ImportError("the digits data needs scikit-learn: pip install 'vmamba[demo]'") from error
    if size < 8:
        raise ValueError(f"load_digits: size must be at least 8, got {size}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"load_digits: test_fraction must be in (0, 1), got {test_fraction}")
    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (b, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)  # (b, 1, size, size)
    images = (images - images.mean()) / images.std()  # (b, 1, size, size)
    labels = torch.tensor(digits.target, dtype=torch.long)  # (b,)
    generator = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for digit in range(10):  # stratified split
        idx = (labels == digit).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        cut = round(len(idx) * test_fraction)
        test_idx.append(idx[:cut])
        train_idx.append(idx[cut:])
    train, test = torch.cat(train_idx), torch.cat(test_idx)
    return Split(images[train], labels[train]), Split(images[test], labels[test])
