"""Training: the optimizer, schedule and step every run uses, and `fit`, the single-process loop of
the CPU examples and the demo (`vmamba train` drives the same step across processes, with
checkpoints)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vmamba_ref.tools.data import Split


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults suit the mini model on digits)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3  # peak AdamW learning rate, after a one-epoch linear warm-up
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    shift: int = 2  # random translation by up to this many pixels (data augmentation)
    seed: int = 0


@dataclass
class History:
    """Per-step training loss and per-epoch test accuracy."""

    step_loss: list[float] = field(default_factory=list)
    epoch_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def random_shift(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `shift` pixels (zero fill). (b, c, h, w) -> (b, c, h, w)."""
    if shift == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))  # (b, c, h + 2s, w + 2s)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=generator)  # (b,) each
    return torch.stack(
        [padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)]
    )  # (b, c, h, w)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor at `step`: linear warm-up over `warmup` steps, then a cosine decay
    to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on `split`, in evaluation mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split.labels), batch_size):
        logits = model(split.images[start : start + batch_size])  # (b, classes)
        correct += int((logits.argmax(1) == split.labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(split.labels)


def build_optimizer(
    model: nn.Module, config: TrainConfig, steps_per_epoch: int, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at `config.lr` with a one-epoch linear warm-up then cosine decay to 0 at `total`
    steps: the one optimizer and schedule of every training run (`fit`, `vmamba train`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(steps_per_epoch, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    return optimizer, scheduler


def optimization_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
) -> torch.Tensor:
    """One step of every training run: cross-entropy, backward, optimizer and schedule step.
    images (b, c, h, w), labels (b,) -> the loss (a 0-d tensor)."""
    loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def fit(model: nn.Module, train: Split, test: Split, config: TrainConfig = TrainConfig(),
        progress: bool = True, max_steps: int | None = None) -> History:
    """Train `model` on `train`, evaluating on `test` after each epoch. `max_steps` cuts the run
    short (quick modes of the examples)."""
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(train.labels) / config.batch_size)
    total = config.epochs * steps_per_epoch if max_steps is None else min(max_steps, config.epochs * steps_per_epoch)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch, total)
    history = History()
    start_time = time.perf_counter()
    model.train()
    step = 0
    with tqdm(total=total, desc="training", unit="step", disable=not progress) as bar:
        while step < total:
            order = torch.randperm(len(train.labels), generator=generator)
            for start in range(0, len(order), config.batch_size):
                if step >= total:
                    break
                idx = order[start : start + config.batch_size]
                images = random_shift(train.images[idx], config.shift, generator)  # (b, c, h, w)
                loss = optimization_step(model, optimizer, scheduler, images, train.labels[idx], config)
                history.step_loss.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if step % steps_per_epoch == 0 or step == total:
                    history.epoch_accuracy.append(accuracy(model, test))
                    bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{history.epoch_accuracy[-1]:.3f}")
    history.seconds = time.perf_counter() - start_time
    return history
