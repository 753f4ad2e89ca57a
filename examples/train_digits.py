"""Train the mini VMamba on scikit-learn's handwritten digits, on the CPU, in about a minute.

The digits (1,797 scans of 8x8 pixels, bundled with scikit-learn: nothing is downloaded) are
upsampled to 32x32 for VMamba's stride-4 stem, so the four stages see 8x8, 4x4, 2x2 and 1x1
grids. The model is `vmamba_mini` (stages of 1, 1, 2, 1 VSS blocks at widths 16 to 128, the
released models' SS2D design) with one input channel and ten classes. It trains with AdamW, a
one-epoch warm-up and a cosine schedule (`vmamba_ref.tools.train.fit`), shows a progress bar, prints
the test accuracy (at least 95% in the full run) and saves the loss and accuracy curves as a PNG.

Run:
    python examples/train_digits.py            # full run: 12 epochs
    python examples/train_digits.py --quick    # a few steps, to check that everything works
    python examples/train_digits.py --backend ref --epochs 20 --out outputs/digits
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vmamba_ref import fastest_backend, vmamba_mini
from vmamba_ref.tools.data import load_digits
from vmamba_ref.tools.plots import plot_history
from vmamba_ref.tools.train import TrainConfig, fit

QUICK_STEPS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=fastest_backend("cpu"),
                        help="scan implementation: ref, numba, torch (default: the fastest installed for the CPU)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="training epochs")
    parser.add_argument("--size", type=int, default=32, help="side of the upsampled digit images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initialization and the batches")
    parser.add_argument("--out", type=Path, default=Path("outputs/train_digits"), help="folder for the PNG")
    parser.add_argument("--quick", action="store_true", help=f"train {QUICK_STEPS} steps only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    train, test = load_digits(size=args.size, seed=args.seed)
    model = vmamba_mini(backend=args.backend, in_chans=1, num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"VMamba-mini, {n_params:,} parameters, backend {args.backend!r}")
    print(f"digits at {args.size}x{args.size}: {len(train.labels)} for training, {len(test.labels)} for testing")

    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    history = fit(model, train, test, config, max_steps=QUICK_STEPS if args.quick else None)
    test_accuracy = history.epoch_accuracy[-1]  # measured after the last step
    path = plot_history(history, args.out / "train_digits.png",
                        title=f"VMamba-mini on digits ({args.backend} backend)")

    print(f"test accuracy: {100 * test_accuracy:.2f}% after {len(history.step_loss)} steps "
          f"({history.seconds:.1f} s of training)")
    print(f"loss and accuracy curves saved to {path}")
    print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
