"""Figures of the documentation, drawn from the package's own code (the docs build calls these).

- `route_orders_figure`: the four cross-scan routes on a small grid, from `route_positions`.
- `erf_initializations_figure`: the effective receptive field of a randomly initialised
  VMamba-mini under each of the paper's three SSM initializations, from `vmamba_ref.tools.erf`.
- `digit_routes_figure`, `digit_cross_merge_figure`: the four route outputs of the first SS2D of
  `digit_model` (VMamba-mini trained briefly on scikit-learn's digits, as the tutorial's first
  page does) on one test digit, in each route's order and put back on the grid.
- `vss_block_figure`: the VSS block and its SS2D as boxes and arrows.
- `route_dependence_figure`, `selectivity_figure`, `memory_length_figure`: the evidence of the
  routes, selective and SSM pages, from `vmamba_ref.tools.evidence`.
- `kernel_tutorial_timings_figure`: the kernel tutorial's Numba scan timed against the reference
  and the `"numba"` backend (`vmamba_ref.tools.kernel_tutorial`; needs Numba).

Run `python -m vmamba_ref.tools.figures OUT_DIR` to write them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import torch

from vmamba_ref.config import Init, SS2DConfig
from vmamba_ref.contract import ROUTES, route_positions
from vmamba_ref.cross_scan import cross_merge, cross_scan, cross_scan_routes
from vmamba_ref.model import VMamba, vmamba_mini
from vmamba_ref.selective_scan import selective_scan
from vmamba_ref.ss2d_core import ss2d_core
from vmamba_ref.tools.data import load_digits
from vmamba_ref.tools.erf import effective_receptive_field, plot_erf, prepare_image, sample_photos
from vmamba_ref.tools.evidence import (
    impulse_response,
    memory_length,
    scan_jacobian,
    selectivity_example,
)
from vmamba_ref.tools.plots import _pyplot, save_figure
from vmamba_ref.tools.train import TrainConfig, fit

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
    return save_figure(fig, path)


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


DIGIT_STEPS = 20  # training steps of `digit_model`, the same as the tutorial's first page
DIGIT_CONFIG = TrainConfig(epochs=1, batch_size=32, seed=0)


@functools.lru_cache(maxsize=1)
def digit_model(steps: int = DIGIT_STEPS) -> tuple[VMamba, torch.Tensor, int]:
    """VMamba-mini trained for `steps` steps on scikit-learn's digits at 32x32 (torch backend,
    seed 0), exactly as the tutorial's first page trains it, in evaluation mode; with the digit
    that page follows, test image 0 (1, 1, 32, 32), and its label."""
    train, test = load_digits(size=32, seed=0)
    torch.manual_seed(0)
    model = vmamba_mini(backend="torch", in_chans=1)
    fit(model, train, test, DIGIT_CONFIG, progress=False, max_steps=steps)
    return model.eval(), test.images[:1], int(test.labels[0])


def ss2d_route_outputs(model: VMamba, image: torch.Tensor) -> SimpleNamespace:
    """Run `image` (1, c_in, H, W) through `model` and open up the first block's SS2D core:
    x (d, h, w) its input map, ys (k, d, l) each route's scan output in that route's step order,
    y (d, h, w) the core's output. ys cross-merged is y (checked here)."""
    ss2d = model.layers[0].blocks[0].op
    seen = {}

    def recording_core(*args):  # ss2d_core's positional arguments, as SS2D.scan passes them
        seen["args"] = args
        return ss2d_core(*args)

    ops = ss2d.ops
    ss2d.ops = dataclasses.replace(ops, ss2d_core=recording_core)  # this instance only, restored below
    try:
        with torch.no_grad():
            model(image)
    finally:
        ss2d.ops = ops
    x, delta, A, B, C, D, delta_bias, softplus = seen["args"]
    b, d, h, w = x.shape
    with torch.no_grad():
        ys = selective_scan(
            cross_scan(x).reshape(b, ROUTES * d, h * w),  # (b, k*d, l)
            cross_scan_routes(delta).reshape(b, ROUTES * d, h * w),  # (b, k*d, l)
            A, cross_scan_routes(B), cross_scan_routes(C), D, delta_bias, softplus,
        ).view(b, ROUTES, d, h * w)  # (b, k, d, l)
        y = ss2d_core(*seen["args"])  # (b, d, h, w)
    torch.testing.assert_close(cross_merge(ys.view(b, ROUTES, d, h, w)), y)
    return SimpleNamespace(x=x[0], ys=ys[0], y=y[0])


def _digit_channel(outputs: SimpleNamespace) -> int:
    """The inner channel whose merged output varies most over the grid: the one the figures show."""
    return int(outputs.y.flatten(1).var(dim=1).argmax())


def digit_routes_figure(path: str | Path) -> Path:
    """The tutorial's digit, then for each route k the first SS2D's input along that route (grey)
    and the route's scan output (colour), one inner channel, in the route's step order t."""
    plt = _pyplot()
    model, image, label = digit_model()
    out = ss2d_route_outputs(model, image)
    channel = _digit_channel(out)
    d, h, w = out.x.shape
    pos = route_positions(h, w)  # (k, l)
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.2), layout="constrained",
                             gridspec_kw={"width_ratios": [0.8, 1, 1, 1, 1]})
    axes[0].imshow(image[0, 0], cmap="gray_r")
    axes[0].set_title(f"the digit (label {label}), 32x32")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    u = out.x[channel].flatten()  # (l,) the SS2D core's input map, row-major
    for k, ax in enumerate(axes[1:]):
        ax.plot(u[pos[k]], color="gray", lw=1, label="input u, read along the route")
        ax.plot(out.ys[k, channel], color=plt.get_cmap("tab10")(k), lw=1.8, label="scan output y_k")
        ax.set_title(f"route {k}: {ROUTE_NAMES[k]}", fontsize=10)
        ax.set_xlabel(f"step t (0..{h * w - 1} over the {h}x{w} grid)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"First SS2D of VMamba-mini after {DIGIT_STEPS} training steps, inner channel {channel} of {d}")
    return save_figure(fig, path)


def digit_cross_merge_figure(path: str | Path) -> Path:
    """Cross-merge on the tutorial's digit: each route's output of the first SS2D (one inner
    channel) put back on the grid at the positions its steps read, and their sum, the merged map."""
    plt = _pyplot()
    model, image, _ = digit_model()
    out = ss2d_route_outputs(model, image)
    channel = _digit_channel(out)
    d, h, w = out.x.shape
    pos = route_positions(h, w)  # (k, l)
    on_grid = torch.zeros(ROUTES, h * w)
    for k in range(ROUTES):
        on_grid[k, pos[k]] = out.ys[k, channel]  # step t of route k goes back to position pos[k, t]
    maps = [*on_grid.view(ROUTES, h, w), out.y[channel]]
    titles = [f"route {k} on the grid" for k in range(ROUTES)] + ["sum = cross-merge output"]
    limit = max(float(m.abs().max()) for m in maps)
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6), layout="constrained")
    for ax, grid, title in zip(axes, maps, titles, strict=True):
        image_ = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image_, ax=axes, shrink=0.8)
    fig.suptitle(f"Cross-merge of the first SS2D on the digit, inner channel {channel} of {d}, {h}x{w} grid")
    return save_figure(fig, path)


def vss_block_figure(path: str | Path) -> Path:
    """The VSS block (left) and its SS2D (right) as boxes and arrows, with each step's shape."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 6.4), layout="constrained")
    ax.set_xlim(0, 12.6)
    ax.set_ylim(0.3, 13.6)
    ax.axis("off")

    def box(x, y, text, colour="#e0f2f1"):
        ax.text(x, y, text, ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.4", facecolor=colour, edgecolor="black", lw=1))
        return x, y

    def arrow(a, b, colour="black", style="-|>", rad=0.0):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle=style, color=colour, lw=1.4,
                                                        shrinkA=14, shrinkB=14, connectionstyle=f"arc3,rad={rad}"))

    block = [box(2.5, 12.2, "x  (b, c, h, w)", "white"), box(2.5, 10.6, "LayerNorm"),
             box(2.5, 9.0, "SS2D", "#ffe0b2"), box(2.5, 7.4, "+", "white"),
             box(2.5, 5.8, "LayerNorm"), box(2.5, 4.2, "MLP  (c -> mlp_ratio*c -> c, GELU)"),
             box(2.5, 2.6, "+", "white"), box(2.5, 1.0, "out  (b, c, h, w)", "white")]
    for a, b in zip(block[:-1], block[1:], strict=True):
        arrow(a, b)
    arrow((1.0, 12.2), (2.2, 7.4), "gray", rad=0.5)  # residual around the token mixer
    arrow((1.0, 7.4), (2.2, 2.6), "gray", rad=0.5)  # residual around the MLP
    ax.text(0.2, 9.8, "residual", color="gray", rotation=90, fontsize=9)
    ax.text(0.2, 4.9, "residual", color="gray", rotation=90, fontsize=9)
    ax.text(2.5, 13.1, "VSS block", ha="center", fontsize=12, weight="bold")

    ss2d = [box(8.6, 12.2, "in_proj 1x1        (b, c, h, w) -> (b, d, h, w)"),
            box(8.6, 10.9, "depthwise conv 3x3, SiLU        (b, d, h, w)"),
            box(8.6, 9.6, "x_proj, dt_proj per pixel: delta, B, C"),
            box(8.6, 8.3, "cross-scan: 4 routes        (b, k, d, l)", "#ffe0b2"),
            box(8.6, 7.0, "selective scan S6 on each route", "#ffe0b2"),
            box(8.6, 5.7, "cross-merge: sum on the grid        (b, d, h, w)", "#ffe0b2"),
            box(8.6, 4.4, "LayerNorm over d"),
            box(8.6, 3.1, "out_proj 1x1        (b, d, h, w) -> (b, c, h, w)")]
    for a, b in zip(ss2d[:-1], ss2d[1:], strict=True):
        arrow(a, b)
    ax.text(8.6, 13.1, "SS2D", ha="center", fontsize=12, weight="bold")
    ax.text(8.6, 1.9, "SS2D core (orange): ss2d_core(x, delta, A, B, C, D, delta_bias)",
            ha="center", fontsize=9, color="dimgray")
    ax.add_patch(plt.Rectangle((4.6, 2.5), 7.9, 10.9, fill=False, ls="--", edgecolor="gray"))
    arrow((3.2, 9.0), (4.6, 9.0), "gray", "-")
    return save_figure(fig, path)


def route_dependence_figure(path: str | Path, h: int = 6, w: int = 6, i: int = 2, j: int = 3) -> Path:
    """What the output at grid position (i, j) depends on, scanned along route 0 only and along
    all four routes: |d y[p] / d x[q]| on the grid, then the whole (l, l) dependence pattern
    J[p, q] != 0, from `evidence.scan_jacobian`."""
    plt = _pyplot()
    p = i * w + j
    cases = {"route 0 only (row-major)": [0], "all four routes": list(range(ROUTES))}
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.6), layout="constrained")
    for col, (name, routes) in enumerate(cases.items()):
        J = scan_jacobian(h, w, routes)  # (l, l)
        grad = J[p].abs().view(h, w)
        shown = torch.where(grad > 0, grad.log10(), torch.tensor(float("nan"), dtype=grad.dtype))
        ax = axes[col]
        image = ax.imshow(shown, cmap="viridis")
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="crimson", lw=2.5))
        ax.set_title(f"{name}:\nlog10 |d y(p) / d x| on the grid, p = ({i}, {j})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.75)
        ax = axes[2 + col]
        ax.imshow(J != 0, cmap="Greys", vmin=0, vmax=1.6)
        ax.set_title(f"{name}:\nJ[p, q] != 0 over all {h * w} positions", fontsize=10)
        ax.set_xlabel("input position q (row-major)")
        ax.set_ylabel("output position p")
    fig.suptitle(f"Which inputs each output depends on, {h}x{w} grid (blank: exactly zero)")
    return save_figure(fig, path)


def selectivity_figure(path: str | Path) -> Path:
    """h_t of one channel for two inputs that differ only before a marker, with a fixed step size
    and with a large one at the marker (left); and an input spike written with the fixed step
    size or ignored through a tiny one (right). From `evidence.selectivity_example`."""
    plt = _pyplot()
    ex = selectivity_example()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.0), layout="constrained")
    colours = plt.get_cmap("tab10")
    for row, label in enumerate(("first input", "second input")):
        left.plot(ex.t, ex.fixed[row], color=colours(row), ls="--", lw=1.2,
                  label=f"{label}, dt = {ex.dt_bias} everywhere")
        left.plot(ex.t, ex.reset[row], color=colours(row), lw=2, label=f"{label}, large dt at t = {ex.marker}")
    left.axvline(ex.marker, color="gray", ls=":")
    left.set(xlabel="step t", ylabel="state h_t",
             title=f"reset: the inputs differ before t = {ex.marker} only")
    left.legend(fontsize=8)
    right.plot(ex.t, ex.fixed[0], color=colours(0), ls="--", lw=1.2, label=f"dt = {ex.dt_bias} at the spike")
    right.plot(ex.t, ex.ignore[0], color=colours(2), lw=2, label="dt about 1e-7 at the spike")
    right.axvline(ex.spike, color="gray", ls=":")
    right.set(xlabel="step t", ylabel="state h_t", title=f"ignore: an input spike (+25) at t = {ex.spike}")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("Selectivity: the step size dt_t decides what enters the state and when it is forgotten (a = -1, n = 1)")
    return save_figure(fig, path)


def memory_length_figure(path: str | Path, length: int = 1000) -> Path:
    """How long an impulse survives: h_t / h_0 = exp(dt a)^t for a few step sizes (left), and the
    first step below 1/e measured from the reference scan against 1 / (dt |a|) (right)."""
    plt = _pyplot()
    a = -1.0
    dts = torch.logspace(-2.9, -0.1, 15, dtype=torch.float64)
    measured = memory_length(impulse_response(dts.tolist(), a, length))
    shown = [0.005, 0.02, 0.1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.0), layout="constrained")
    for dt, response in zip(shown, impulse_response(shown, a, 400), strict=True):
        line, = left.plot(response, lw=1.8, label=f"dt = {dt}: 1 / (dt |a|) = {1 / (dt * -a):.0f} steps")
        left.axvline(1 / (dt * -a), color=line.get_color(), ls=":")
    left.axhline(float(torch.exp(torch.tensor(-1.0))), color="gray", ls="--", label="1/e")
    left.set(xlabel="step t after the impulse", ylabel="h_t / h_0", title=f"impulse response, a = {a:g}")
    left.legend(fontsize=8)
    right.loglog(dts, 1 / (dts * -a), color="gray", label="1 / (dt |a|)")
    right.loglog(dts, measured, "o", color="crimson", label="measured: first step below 1/e")
    right.axvspan(0.001, 0.1, color="teal", alpha=0.1, label="Mamba's initial dt range")
    right.set(xlabel="step size dt", ylabel="steps", title="memory length against dt")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def kernel_tutorial_timings_figure(path: str | Path, lengths: tuple[int, ...] = (256, 1024, 4096)) -> Path:
    """Seconds per call of the reference loop, the kernel tutorial's Numba scan and the `"numba"`
    backend, against the sequence length (`kernel_tutorial.time_scans`); per element on the right."""
    from vmamba_ref.tools.kernel_tutorial import (
        time_scans,  # needs Numba, which only this figure uses
    )

    plt = _pyplot()
    channels = 64
    seconds = time_scans(lengths, channels=channels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.0), layout="constrained")
    for name, times in seconds.items():
        left.loglog(lengths, times, "o-", label=name)
        right.loglog(lengths, [1e9 * s / (channels * l) for s, l in zip(times, lengths, strict=True)], "o-", label=name)
    left.set(xlabel="sequence length l", ylabel="seconds per call", title=f"forward scan, b = 1, k*d = {channels}, n = 1")
    right.set(xlabel="sequence length l", ylabel="ns per channel and step", title="per element")
    for ax in (left, right):
        ax.set_xticks(lengths, labels=[str(l) for l in lengths])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Best of 5 calls (the reference: 1), {os.cpu_count()} CPU core(s), float32 inputs")
    return save_figure(fig, path)


FIGURES = {
    "routes.png": route_orders_figure,
    "erf_initializations.png": erf_initializations_figure,
    "digit_routes.png": digit_routes_figure,
    "digit_cross_merge.png": digit_cross_merge_figure,
    "vss_block.png": vss_block_figure,
    "route_dependence.png": route_dependence_figure,
    "selectivity.png": selectivity_figure,
    "memory_length.png": memory_length_figure,
    "kernel_tutorial_timings.png": kernel_tutorial_timings_figure,
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
