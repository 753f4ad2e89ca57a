"""Is VMamba robust to how its SSM starts? The paper's initialization and activation ablation,
at small scale on the CPU.

The VMamba paper trains VMamba-T with Mamba's initialization, a random one and a "zero" one
(`SS2DConfig(init="mamba" | "random" | "zero")`, see the tutorial's page on initializations)
and with several activations after SS2D's depthwise convolution, and reports accuracies within
a few tenths of a point of each other. This script trains the mini VMamba on scikit-learn's
digits (or, with `--task pathfinder`, on the generated long-range task of
`vmamba_ref.tools.pathfinder`) for every combination of initialization and activation, over
several seeds, and prints and plots the final test accuracies with their spread (mean, standard
deviation, min, max).

With one state per channel (`--d-state 1`, VMamba-T's setting) the "mamba" and "zero"
initializations both start from A = -1; with `--d-state 16` Mamba's S4D-real A = -(1..16)
differs from zero's A = -1.

Each run uses the same data split, schedule and number of steps; the seed changes the
initialization and the order of the batches.

Run:
    python examples/initialization_robustness.py            # full run: 3 x 3 settings x 2 seeds
    python examples/initialization_robustness.py --quick    # a few steps per run, to check it runs
    python examples/initialization_robustness.py --seeds 0 1 2 --epochs 6 --activations silu gelu
    python examples/initialization_robustness.py --task pathfinder --d-state 16 --activations silu
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import get_args

import torch
from tqdm.auto import tqdm

from vmamba_ref import SS2DConfig, fastest_backend, vmamba_mini
from vmamba_ref.config import Activation, Init
from vmamba_ref.tools.data import load_digits
from vmamba_ref.tools.pathfinder import EXAMPLE_TASK, load_pathfinder
from vmamba_ref.tools.plots import _pyplot, save_figure
from vmamba_ref.tools.train import TrainConfig, fit

QUICK_STEPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=fastest_backend("cpu"),
                        help="scan implementation: ref, numba, torch (default: the fastest installed for the CPU)")
    parser.add_argument("--inits", nargs="+", default=list(get_args(Init)), choices=get_args(Init))
    parser.add_argument("--activations", nargs="+", default=["silu", "gelu", "relu"], choices=get_args(Activation))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of every run")
    parser.add_argument("--task", choices=["digits", "pathfinder"], default="digits",
                        help="the digits, or the generated Pathfinder task (4096 training images)")
    parser.add_argument("--d-state", type=int, default=1, help="state size per channel n")
    parser.add_argument("--out", type=Path, default=Path("outputs/initialization_robustness"), help="folder for the PNG")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} steps per run, one seed, one activation")
    return parser.parse_args(argv)


def train_one(init: str, act: str, seed: int, args: argparse.Namespace, data) -> float:
    """Final test accuracy of one run."""
    train, test = data
    classes, shift = (10, TrainConfig.shift) if args.task == "digits" else (2, 0)
    torch.manual_seed(seed)
    model = vmamba_mini(backend=args.backend, in_chans=1, num_classes=classes,
                        ssm=SS2DConfig(init=init, act=act, d_state=args.d_state))
    history = fit(model, train, test, TrainConfig(epochs=args.epochs, seed=seed, shift=shift), progress=False,
                  max_steps=QUICK_STEPS if args.quick else None)
    return history.epoch_accuracy[-1]  # measured after the last step


def plot(results: dict[tuple[str, str], list[float]], path: Path, title: str) -> Path:
    """One group of bars per activation, one bar per initialization: the mean over seeds, a
    black line from the min to the max, and every seed as a dot."""
    plt = _pyplot()
    inits = sorted({init for init, _ in results}, key=list(get_args(Init)).index)
    acts = list(dict.fromkeys(act for _, act in results))
    fig, ax = plt.subplots(figsize=(2.2 * len(acts) + 2, 4), layout="constrained")
    width = 0.8 / len(inits)
    for i, init in enumerate(inits):
        xs = [a + (i - (len(inits) - 1) / 2) * width for a in range(len(acts))]
        runs = [[100 * v for v in results[init, act]] for act in acts]
        ax.bar(xs, [statistics.mean(r) for r in runs], width * 0.9, label=f"init={init!r}", alpha=0.7)
        for x, r in zip(xs, runs, strict=True):
            ax.vlines(x, min(r), max(r), color="black", lw=1.5)
            ax.scatter([x] * len(r), r, color="black", s=8, zorder=3)
    lowest = min(100 * v for r in results.values() for v in r)
    ax.set(xticks=range(len(acts)), xticklabels=[f"act={a!r}" for a in acts], ylabel="test accuracy (%)",
           ylim=(max(0.0, lowest - 5), 100), title=title)
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.seeds, args.activations = args.seeds[:1], args.activations[:1]
    start = time.perf_counter()
    if args.task == "digits":
        data = load_digits(size=32, seed=0)
    else:
        data = load_pathfinder(*((64, 64) if args.quick else (4096, 1024)), EXAMPLE_TASK, seed=0)
    settings = [(init, act) for act in args.activations for init in args.inits]
    runs = [(init, act, seed) for init, act in settings for seed in args.seeds]
    steps = "" if not args.quick else f", {QUICK_STEPS} steps each"
    print(f"{len(settings)} settings x {len(args.seeds)} seeds, {args.epochs} epochs{steps}, backend {args.backend!r}, "
          f"task {args.task}, d_state {args.d_state}")

    results: dict[tuple[str, str], list[float]] = {setting: [] for setting in settings}
    for init, act, seed in tqdm(runs, desc="runs", unit="run"):
        results[init, act].append(train_one(init, act, seed, args, data))

    print()
    print("| init   | activation | mean acc. | std  | min    | max    | seeds |")
    print("|--------|------------|-----------|------|--------|--------|-------|")
    for (init, act), accs in results.items():
        values = [100 * a for a in accs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {init:<6} | {act:<10} | {statistics.mean(values):8.2f}% | {spread:4.2f} | "
              f"{min(values):5.2f}% | {max(values):5.2f}% | {len(values):5d} |")
    means = [statistics.mean(v) for v in results.values()]
    print(f"\nrange of the mean accuracies over all settings: {100 * (max(means) - min(means)):.2f} points")
    path = plot(results, args.out / "initialization_robustness.png",
                title=f"VMamba-mini on {args.task}, n = {args.d_state}, {args.epochs} epochs, {len(args.seeds)} seed(s)")
    print(f"plot saved to {path}")
    print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
