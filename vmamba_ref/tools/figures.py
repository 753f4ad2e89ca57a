"""Figures of the documentation, drawn from the package's own code (the docs build calls these).

- `route_orders_figure`: the four cross-scan routes on a small grid, from `route_positions`.
- `erf_initializations_figure`: the effective receptive field of a randomly initialised
  VMamba-mini under each of the paper's three SSM initializations, from `vmamba_ref.tools.erf`.

Run `python -m vmamba_ref.tools.figures OUT_DIR` to write them all.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import torch

from vmamba_ref.config import Init, SS2DConfig
from vmamba_ref.contract import route_positions
from vmamba_ref.model import vmamba_mini
from vmamba_ref.tools.erf import effective_receptive_field, plot_erf, prepare_image, sample_photos
from vmamba_ref.tools.plots import _pyplot

ROUTE_NAMES = ("row-major", "column-major", "row-major, reversed", "column-major, reversed")


def route_orders_figure(path: str | Path, h: int = 2, w: int = 3) -> Path:
    """The grid drawn four times, once per route k: each cell shows its row-major index (small,
    top left) and the step t at which route k reads it (large); arrows follow the route.

    The orders are `route_positions(h, w)`, the index table cross-scan itself uses.
    """
    plt = _pyplot()
    pos = route_positions(h, w).tolist()  # pos[k][t] = row-major index read at step t of route k
    fig, axes = plt.subplots(1, 4, figsize=(3.2 * 4, 3.2 * h / w + 1.1), layout="constrained")
    colours = plt.get_cmap("viridis")
    for k, ax in enumerate(axes):
        step_of = {p: t for t, p in enumerate(pos[k])}
        for p in range(h * w):
            i, j = divmod(p, w)
            t = step_of[p]
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=colours(t / max(1, h * w - 1)), alpha=0.35,
                                       edgecolor="black"))
            ax.text(j + 0.08, i + 0.1, str(p), fontsize=8, va="top", ha="left", color="dimgray")
            ax.text(j + 0.5, i + 0.62, f"t={t}", fontsize=12, va="center", ha="center", weight="bold")
        centres = [(p % w + 0.5, p // w + 0.35) for p in pos[k]]
        for (x0, y0), (x1, y1) in zip(centres[:-1], centres[1:], strict=True):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", color="crimson", lw=1.5, shrinkA=6, shrinkB=6))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"route {k}: {ROUTE_NAMES[k]}\n{pos[k]}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def erf_initializations_figure(path: str | Path, resolution: int = 64, num_images: int = 4, seed: int = 0) -> Path:
    """ERFs of VMamba-mini freshly initialised with each SSM initialization ("before training"),
    averaged over scikit-image's sample photos at `resolution` x `resolution`."""
    images = [prepare_image(p, resolution) for p in sample_photos()[:num_images]]
    maps = {}
    for init in get_args(Init):
        torch.manual_seed(seed)
        model = vmamba_mini(backend="ref", ssm=SS2DConfig(init=init))
        maps[f"init={init!r}"] = effective_receptive_field(model, images).map
    title = f"VMamba-mini before training, {num_images} photos at {resolution}x{resolution}"
    return plot_erf(maps, path, title=title)


FIGURES = {
    "routes.png": route_orders_figure,
    "erf_initializations.png": erf_initializations_figure,
}
"""File name -> function(path) for every figure of the documentation."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the documentation's figures")
    parser.add_argument("out", type=Path, help="folder to write the PNG files into")
    args = parser.parse_args(argv)
    for name, draw in FIGURES.items():
        draw(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
