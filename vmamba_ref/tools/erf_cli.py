"""`vmamba erf`: the effective receptive field of a model as a paper-style heatmap PNG.

    vmamba erf vmamba_tiny --resolution 224 --out erf_tiny.png
    vmamba erf vmamba_mini --checkpoint mini.pth --in-chans 1 --num-classes 10 --images photos/

The model is a named constructor of `vmamba_ref.MODELS`, freshly initialised ("before
training") or loaded from a checkpoint ("after training"). The images are scikit-image's bundled
photos unless a folder is given; the method is `vmamba_ref.tools.erf.effective_receptive_field`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vmamba_ref.checkpoint import load_checkpoint
from vmamba_ref.contract import fastest_backend
from vmamba_ref.model import MODELS
from vmamba_ref.tools.cli import (
    UsageError,
    check_backend,
    check_device,
    check_installed,
    check_output_file,
    int_at_least,
)
from vmamba_ref.tools.erf import (
    IMAGE_SUFFIXES,
    SAMPLE_PHOTOS,
    effective_receptive_field,
    folder_images,
    plot_erf,
    prepare_image,
    sample_photos,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=sorted(MODELS), help="which model to measure")
    parser.add_argument("--checkpoint", type=Path, help="weights to load (official or own); default: a fresh initialisation")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow pickled objects in the checkpoint (official training checkpoints); only for files you trust")
    parser.add_argument("--images", type=Path,
                        help=f"folder of images; default: scikit-image's bundled photos ({', '.join(SAMPLE_PHOTOS)})")
    parser.add_argument("--num-images", type=int_at_least(1), default=None, help="use at most this many images (default: all)")
    parser.add_argument("--resolution", type=int_at_least(32), default=224,
                        help="side of the square input, at least 32 (the backbone downsamples by 32; the paper: 1024)")
    parser.add_argument("--in-chans", type=int, choices=(1, 3), default=3, help="input channels of the model")
    parser.add_argument("--num-classes", type=int_at_least(0), default=None,
                        help="classes of the model's head, to match a checkpoint (0: no head)")
    parser.add_argument("--backend", default="auto", help="ref, numba, triton, or auto (the fastest installed for --device)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the initialisation when no checkpoint is given")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: outputs/erf/<model>.png)")


def output_path(args: argparse.Namespace) -> Path:
    return args.out if args.out is not None else Path("outputs/erf") / f"{args.model}.png"


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that can fail on the user's arguments, before any work (UsageError)."""
    check_device("--device", args.device)
    check_backend("--backend", args.backend)
    check_output_file("--out", output_path(args), suffixes=(".png",))
    check_installed("matplotlib", "demo", "the heatmap")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    if args.images is not None:
        if not args.images.is_dir():
            raise UsageError(f"--images {args.images}: expected a folder of images")
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in args.images.iterdir()):
            raise UsageError(f"--images {args.images}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    check_installed("skimage", "examples", "reading the photos")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    backend = fastest_backend(args.device) if args.backend == "auto" else args.backend
    overrides = {"in_chans": args.in_chans}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    torch.manual_seed(args.seed)
    model = MODELS[args.model](backend=backend, **overrides).to(args.device)
    state = f"random initialisation (seed {args.seed})"
    if args.checkpoint is not None:
        try:
            report = load_checkpoint(model, args.checkpoint, trust_pickle=args.trust_pickle)
        except ValueError as error:  # damaged, pickled or not this model's: the user's file
            raise UsageError(f"--checkpoint {args.checkpoint}: {'; '.join(str(error).splitlines())}") from None
        state = f"{args.checkpoint} ({report.entry})"
    photos = folder_images(args.images) if args.images is not None else sample_photos()
    photos = photos[: args.num_images]
    images = [prepare_image(p, args.resolution, args.in_chans).to(args.device) for p in photos]
    print(f"ERF of {args.model} [{state}], backend {backend!r}, {len(images)} images at "
          f"{args.resolution}x{args.resolution}")
    start = time.perf_counter()
    erf = effective_receptive_field(model, images, progress=True)
    seconds = time.perf_counter() - start
    out = output_path(args)
    label = "before training" if args.checkpoint is None else "after training"
    path = plot_erf({f"{args.model}, {label}": erf.map.cpu()}, out,
                    title=f"ERF at {args.resolution}x{args.resolution}, {erf.used} images")
    skipped = f", {erf.skipped} skipped (NaN)" if erf.skipped else ""
    print(f"averaged {erf.used} images{skipped} in {seconds:.1f} s; heatmap saved to {path}")
    return 0
