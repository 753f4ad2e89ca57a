"""`vmamba demo`: train the mini VMamba on scikit-learn's digits on the CPU, in a few minutes."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from vmamba_ref.checkpoint import save_checkpoint
from vmamba_ref.contract import fastest_backend
from vmamba_ref.model import vmamba_mini
from vmamba_ref.tools.cli import check_backend, check_installed, check_output_dir, int_at_least
from vmamba_ref.tools.data import load_digits
from vmamba_ref.tools.plots import plot_history
from vmamba_ref.tools.train import TrainConfig, accuracy, fit

log = logging.getLogger(__name__)

WEIGHTS = "vmamba_mini_digits.pt"  # the trained model, in --out: `vmamba_ref.load_model` reads it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", help="ref, numba, triton, or auto (the fastest installed for the CPU)")
    parser.add_argument("--epochs", type=int_at_least(1), default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for the loss-curve plot and the trained weights")
    parser.add_argument("--quick", action="store_true", help="a few steps only, to check that everything runs")


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that can fail on the user's arguments, before any work (UsageError)."""
    check_backend("--backend", args.backend)
    check_output_dir("--out", args.out)
    check_installed("sklearn", "demo", "the digits data")
    check_installed("matplotlib", "demo", "the loss-curve plot")


def warm_up(model: torch.nn.Module, images: torch.Tensor) -> float:
    """One forward and backward pass on `images`, so that a JIT backend compiles its kernels
    before training (and its time does not count as a training step). Touches neither the
    weights nor the random state; returns the seconds it took."""
    start = time.perf_counter()
    with torch.random.fork_rng():
        model(images).sum().backward()  # (b, classes) -> a scalar
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    backend = fastest_backend("cpu") if args.backend == "auto" else args.backend
    torch.manual_seed(args.seed)
    train, test = load_digits(size=32, seed=args.seed)
    model = vmamba_mini(backend=backend, in_chans=1)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"VMamba-mini ({n_params:,} parameters), backend {backend!r}, "
          f"{len(train.labels)} training and {len(test.labels)} test digits at 32x32")
    if backend == "numba":  # compiled on its first call: do it before the progress bar starts
        print("compiling the numba kernels (first run only, ~1 min)...", flush=True)
        print(f"compiled in {warm_up(model, train.images[:2]):.1f} s", flush=True)
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    history = fit(model, train, test, config, max_steps=5 if args.quick else None)
    acc = accuracy(model, test)
    path = plot_history(history, args.out / "loss_curve.png")
    print(f"test accuracy: {100 * acc:.2f}%  ({history.seconds:.1f} s of training)")
    print(f"loss curve saved to {path}")
    print(f"weights saved to {save_checkpoint(model, args.out / WEIGHTS)}")
    return 0
