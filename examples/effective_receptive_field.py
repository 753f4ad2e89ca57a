"""The paper's effective-receptive-field figure, at small scale: VMamba against a CNN, before and
after training.

VMamba's figure 1 shows the effective receptive field (ERF) of ResNet, ConvNeXt, Swin, DeiT and
VMamba before and after ImageNet training: the CNNs' ERFs stay local, VMamba's covers the whole
image. This script repeats the experiment on a CPU:

1. Two small backbones of the same shape (stride-4 stem, four stages of 1, 1, 2, 1 blocks at
   widths 16 to 128, stride 32 overall): `vmamba_mini` and a plain residual CNN whose blocks
   are two 3x3 convolutions.
2. The ERF of each, freshly initialised, as the paper measures it (`vmamba_ref.tools.erf`): gradient
   of the central output position with respect to the input, ReLU, averaged over real photos
   that ship with scikit-image, `** 0.2`, normalised.
3. Both trained on scikit-learn's digits (32x32) or, with `--task pathfinder`, on the generated
   long-range task of `vmamba_ref.tools.pathfinder` (32x32), then measured again on the same photos at a
   larger size (128x128 by default), as the paper measures its 224-trained models at 1024.
4. One PNG with the four maps (rows: before and after training), paper style, and a table of
   how concentrated each map is: the share of the total gradient that falls in the central
   quarter of the image (a CNN's stays near the centre; the share of a map that is flat across
   the image is 25%).

Run:
    python examples/effective_receptive_field.py            # full run
    python examples/effective_receptive_field.py --quick    # a few steps, two photos, to check it runs
    python examples/effective_receptive_field.py --task pathfinder --d-state 16 --epochs 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vmamba_ref import SS2DConfig, fastest_backend, vmamba_mini
from vmamba_ref.tools.baselines import SmallCNN
from vmamba_ref.tools.data import load_digits
from vmamba_ref.tools.erf import effective_receptive_field, plot_erf, prepare_image, sample_photos
from vmamba_ref.tools.pathfinder import EXAMPLE_TASK, load_pathfinder
from vmamba_ref.tools.train import TrainConfig, fit

QUICK_STEPS = 4


def central_share(mean_gradient: torch.Tensor) -> float:
    """Share of the total gradient inside the central square of half the side (a quarter of
    the area)."""
    h, w = mean_gradient.shape
    centre = mean_gradient[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    return float(centre.sum() / mean_gradient.sum())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=fastest_backend("cpu"),
                        help="VMamba's scan implementation: ref, numba, torch (default: the fastest installed for the CPU)")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="training epochs of each model")
    parser.add_argument("--resolution", type=int, default=128,
                        help="side of the photos the ERF is measured on (a multiple of 64 centres the output)")
    parser.add_argument("--images", type=int, default=10, help="how many of scikit-image's photos to average over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=["digits", "pathfinder"], default="digits",
                        help="what both models train on: the digits, or the generated Pathfinder task "
                             "(vmamba_ref.tools.pathfinder, 8192 training images)")
    parser.add_argument("--d-state", type=int, default=1, help="VMamba's state size per channel n")
    parser.add_argument("--out", type=Path, default=Path("outputs/effective_receptive_field"), help="folder for the PNG")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} training steps, two photos at 64x64")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    resolution, n_images = (64, 2) if args.quick else (args.resolution, args.images)
    photos = [prepare_image(p, resolution, channels=1) for p in sample_photos()[:n_images]]
    if args.task == "digits":
        (train, test), classes, shift = load_digits(size=32, seed=args.seed), 10, TrainConfig.shift
    else:
        sizes = (64, 64) if args.quick else (8192, 1024)
        (train, test), classes, shift = load_pathfinder(*sizes, EXAMPLE_TASK, seed=args.seed), 2, 0
    torch.manual_seed(args.seed)
    models = {
        "CNN": SmallCNN(in_chans=1, num_classes=classes),
        "VMamba": vmamba_mini(backend=args.backend, in_chans=1, num_classes=classes,
                              ssm=SS2DConfig(d_state=args.d_state)),
    }
    print(f"VMamba backend {args.backend!r}, d_state {args.d_state}; trained on {args.task}; "
          f"ERF over {len(photos)} scikit-image photos at {resolution}x{resolution}")

    maps, shares, accuracies = {}, {}, {}
    for name, model in models.items():
        erf = effective_receptive_field(model, photos, progress=True)
        maps[f"{name}, before training"] = erf.map
        shares[name, "before"] = central_share(erf.mean_gradient)
    for name, model in models.items():
        print(f"training {name} on {args.task}")
        history = fit(model, train, test, TrainConfig(epochs=args.epochs, seed=args.seed, shift=shift),
                      max_steps=QUICK_STEPS if args.quick else None)
        accuracies[name] = history.epoch_accuracy[-1]  # measured after the last step
        erf = effective_receptive_field(model, photos, progress=True)
        maps[f"{name}, after training"] = erf.map
        shares[name, "after"] = central_share(erf.mean_gradient)

    # Rows: before, after; columns: CNN, VMamba.
    order = ["CNN, before training", "VMamba, before training", "CNN, after training", "VMamba, after training"]
    path = plot_erf({key: maps[key] for key in order}, args.out / "effective_receptive_field.png", ncols=2,
                    title=f"Effective receptive fields, {len(photos)} photos at {resolution}x{resolution}")

    print()
    print(f"| model  | {args.task + ' test accuracy':>20} | central-quarter share before | after |")
    print("|--------|----------------------|------------------------------|-------|")
    for name in models:
        print(f"| {name:<6} | {100 * accuracies[name]:19.2f}% | {100 * shares[name, 'before']:27.1f}% "
              f"| {100 * shares[name, 'after']:4.1f}% |")
    print(f"\nERF maps saved to {path}")
    print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
