"""Does the scan matter at long range? VMamba-mini against a CNN, a ViT and itself without its
scan, on a generated Pathfinder task.

The VMamba paper argues that the 2-D selective scan gives every pixel a global receptive field
at linear cost. On the digits (examples/train_digits.py) the question cannot be asked: the skip
term D * u dominates the scan's output there. This script asks it on a task that needs
information from far away: `vmamba_ref.tools.pathfinder`, dashed curves on a 32x32 image with
two markers, label 1 when one curve joins them. Around each marker both classes look the same;
only following a curve from marker to marker tells them apart.

Four models of about the same size train on the same images with the same budget (steps,
batch size, AdamW and its schedule, `vmamba_ref.tools.train.fit`), over several seeds:

- VMamba-mini (`vmamba_mini`, one input channel, two classes, `--d-state` states per channel);
- the same model with its scan removed (`vmamba_ref.tools.baselines.remove_scan`: each SS2D
  core returns only D * u, summed over the four routes);
- a residual CNN with VMamba-mini's stem and stage layout (`SmallCNN`);
- a ViT on 4x4 patches (`SmallViT`).

It prints the parameter counts, a table of final test accuracies (mean, standard deviation,
min, max over seeds) with training times, and saves a plot.

Run:
    python examples/long_range_pathfinder.py            # full run: 4 models x 2 seeds
    python examples/long_range_pathfinder.py --quick    # a few steps per model, to check it runs
    python examples/long_range_pathfinder.py --steps 1500 --lr 1e-3   # the longer run of docs/long_range.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from vmamba_ref import SS2DConfig, fastest_backend, vmamba_mini
from vmamba_ref.tools.baselines import SmallCNN, SmallViT, remove_scan
from vmamba_ref.tools.pathfinder import EXAMPLE_TASK, load_pathfinder
from vmamba_ref.tools.plots import _pyplot, save_figure
from vmamba_ref.tools.train import TrainConfig, fit

QUICK_STEPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=fastest_backend("cpu"),
                        help="VMamba's scan implementation: ref, numba, torch (default: the fastest installed for the CPU)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr,
                        help=f"peak AdamW learning rate of every model (default {TrainConfig.lr})")
    parser.add_argument("--train-size", type=int, default=8192, help="generated training images")
    parser.add_argument("--test-size", type=int, default=1024, help="generated test images")
    parser.add_argument("--d-state", type=int, default=1, help="VMamba's state size per channel n")
    parser.add_argument("--out", type=Path, default=Path("outputs/long_range_pathfinder"), help="folder for the PNG")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} steps per model, one seed, 64 training images")
    return parser.parse_args(argv)


def build_models(args: argparse.Namespace) -> dict[str, Callable[[], nn.Module]]:
    """The four contenders, each built afresh for every seed. The CNN and ViT widths are chosen
    for parameter counts within 20% of VMamba-mini's."""
    ssm = SS2DConfig(d_state=args.d_state)
    image_size = EXAMPLE_TASK.size * EXAMPLE_TASK.scale
    return {
        "VMamba-mini": lambda: vmamba_mini(backend=args.backend, in_chans=1, num_classes=2, ssm=ssm),
        "VMamba-mini, no scan": lambda: remove_scan(
            vmamba_mini(backend=args.backend, in_chans=1, num_classes=2, ssm=ssm)),
        "CNN": lambda: SmallCNN(in_chans=1, num_classes=2, dims=(16, 24, 48, 96)),
        "ViT": lambda: SmallViT(in_chans=1, num_classes=2, image_size=image_size, dim=96, depth=4),
    }


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plot(results: dict[str, list[float]], path: Path, title: str) -> Path:
    """One bar per model: the mean accuracy over seeds, a black line from min to max, every seed
    as a dot, and a dashed line at chance (50%)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for x, accs in enumerate(results.values()):
        values = [100 * a for a in accs]
        ax.bar(x, statistics.mean(values), 0.6, alpha=0.7)
        ax.vlines(x, min(values), max(values), color="black", lw=1.5)
        ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance")
    ax.set(xticks=range(len(results)), xticklabels=list(results), ylabel="test accuracy (%)", ylim=(40, 100),
           title=title)
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.train_size, args.test_size = args.seeds[:1], QUICK_STEPS, 64, 64
    start = time.perf_counter()
    train, test = load_pathfinder(args.train_size, args.test_size, EXAMPLE_TASK, seed=0)
    print(f"Pathfinder: {args.train_size} training and {args.test_size} test images "
          f"({time.perf_counter() - start:.1f} s to generate); {args.steps} steps of {args.batch_size}, "
          f"learning rate {args.lr:g}, {len(args.seeds)} seed(s), VMamba backend {args.backend!r}, d_state {args.d_state}")
    builders = build_models(args)
    counts = {name: parameter_count(build()) for name, build in builders.items()}
    for name, count in counts.items():
        print(f"  {name:<22} {count:>9,} parameters ({count / counts['VMamba-mini']:.2f}x VMamba-mini)")

    config = TrainConfig(epochs=args.steps, batch_size=args.batch_size, lr=args.lr, shift=0)  # `steps` cuts every run
    results: dict[str, list[float]] = {name: [] for name in builders}
    seconds: dict[str, float] = {name: 0.0 for name in builders}
    runs = [(name, seed) for name in builders for seed in args.seeds]
    for name, seed in tqdm(runs, desc="runs", unit="run"):
        tqdm.write(f"training {name}, seed {seed}")
        torch.manual_seed(seed)
        model = builders[name]()
        history = fit(model, train, test, TrainConfig(**{**config.__dict__, "seed": seed}), progress=False,
                      max_steps=args.steps)
        results[name].append(history.epoch_accuracy[-1])  # measured after the last step
        seconds[name] += history.seconds
        tqdm.write(f"  test accuracy {100 * history.epoch_accuracy[-1]:.2f}% after {history.seconds:.1f} s")

    print()
    print("| model                  | params  | mean acc. | std  | min    | max    | train s/seed |")
    print("|------------------------|---------|-----------|------|--------|--------|--------------|")
    for name, accs in results.items():
        values = [100 * a for a in accs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name:<22} | {counts[name]:>7,} | {statistics.mean(values):8.2f}% | {spread:4.2f} | "
              f"{min(values):5.2f}% | {max(values):5.2f}% | {seconds[name] / len(values):12.1f} |")
    path = plot(results, args.out / "long_range_pathfinder.png",
                title=f"Pathfinder 32x32, {args.steps} steps, lr {args.lr:g}, {len(args.seeds)} seed(s)")
    print(f"\nplot saved to {path}")
    print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
