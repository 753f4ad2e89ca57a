"""A long-range image task generated from a seed, in the spirit of Long Range Arena's
Pathfinder (Tay et al., 2021; Linsley et al., 2018): are the two marked dots joined by a
dashed curve?

Each image (size x size, one channel) holds `curves` dashed curves that never touch one
another, all of exactly the same length and dash pattern, and two markers (3x3 squares) on
curve ends. In a positive image (label 1) the markers sit on the two ends of curve 0; in a
negative image (label 0) on one end of curve 0 and one end of curve 1. Everything else is
drawn before the label is read, so the two classes have the same number of curves, dashes,
ends and markers, and the same distribution of ink: around each marker the picture is the same
(a marked curve end), and only following a curve from one marker to the other tells the
classes apart. The markers can lie up to the whole image apart.

Curves are smooth random walks: unit steps whose heading turns by a normal angle at each
step, reflected off a margin inside the border, drawn `dash` steps on and `gap` steps off. A
curve is redrawn while it comes closer than `separation` pixels (Chebyshev distance) to an
earlier one (its ends and the markers on them: `separation + 1`), or its ends come within
`end_distance` (Chebyshev) of another end. The ink on either side of a gap inside a curve is at most 2
pixels apart (Chebyshev distance), the ink of two curves at least 3, so a flood fill over the
ink that bridges 2 pixels recovers each curve (the tests check every label that way).

Generation is NumPy only, deterministic for a seed, and takes a few milliseconds an image on one
CPU core (rejection sampling: a batch of candidate walks per curve, the first that fits is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vmamba_ref.tools.data import Split

PATH_VALUE = 0.5
"""Ink of a curve pixel in the raw image (background 0)."""
MARKER_VALUE = 1.0
"""Ink of a marker pixel in the raw image."""
MAX_REDRAWS = 1000
"""Images redrawn from scratch before `render_pathfinder` gives up on a configuration."""


@dataclass(frozen=True)
class PathfinderConfig:
    """Geometry of the generated images."""

    size: int = 32  # side of the square image the curves are drawn on
    scale: int = 1  # each drawn pixel becomes a scale x scale block: images are (size * scale) wide
    curves: int = 3  # curves per image: curve 0, curve 1 and curves - 2 unmarked distractors
    dashes: int = 8  # dashes per curve
    dash: int = 3  # steps drawn per dash
    gap: int = 1  # steps left blank between dashes (at most 1, so flood fill can bridge them)
    turn: float = 0.35  # standard deviation of the heading change per step, in radians
    margin: int = 2  # curves stay this many pixels away from the border (room for a marker)
    separation: int = 3  # minimum Chebyshev distance between the pixels of two curves
    end_distance: float = 6.0  # minimum Chebyshev distance between any two curve ends (>= separation + 2)
    attempts: int = 64  # candidate walks drawn at once per curve; if none fits, the image is redrawn

    def __post_init__(self) -> None:
        if self.size < 12:
            raise ValueError(f"PathfinderConfig.size must be >= 12, got {self.size}")
        if self.scale < 1:
            raise ValueError(f"PathfinderConfig.scale must be >= 1, got {self.scale}")
        if self.curves < 2:
            raise ValueError(f"PathfinderConfig.curves must be >= 2 (two curves carry markers), got {self.curves}")
        if self.dashes < 1 or self.dash < 1:
            raise ValueError(f"PathfinderConfig needs dashes >= 1 and dash >= 1, got {self.dashes}, {self.dash}")
        if self.gap not in (0, 1):
            raise ValueError(f"PathfinderConfig.gap must be 0 or 1 (wider gaps break connectivity), got {self.gap}")
        if self.separation < 3:
            raise ValueError(f"PathfinderConfig.separation must be >= 3 (markers are 3x3), got {self.separation}")
        if self.margin < 1 or 2 * self.margin >= self.size:
            raise ValueError(f"PathfinderConfig.margin must be in [1, size / 2), got {self.margin}")
        if self.end_distance < self.separation + 2:
            raise ValueError(f"PathfinderConfig.end_distance must be >= separation + 2 = {self.separation + 2} "
                             f"(markers on two ends keep the separation), got {self.end_distance}")
        if self.turn < 0 or self.attempts < 1:
            raise ValueError("PathfinderConfig needs turn >= 0 and attempts >= 1")

    @property
    def steps(self) -> int:
        """Pixels stepped along one curve, from end to end: every dash, the gaps between them."""
        return self.dashes * (self.dash + self.gap) - self.gap


EXAMPLE_TASK = PathfinderConfig(size=16, scale=2, curves=2, dashes=4, margin=1, end_distance=5)
"""The examples' task: two curves of four dashes drawn on a 16x16 grid and shown at 32x32 (each
drawn pixel a 2x2 block, so that VMamba's stride-4 stem still sees a curve)."""


def _walks(config: PathfinderConfig, rng: np.random.Generator, m: int) -> np.ndarray:
    """`m` smooth random walks of `config.steps` unit steps that bounce off the margin, as
    integer pixel positions (m, steps, 2) in (row, column)."""
    low, span = config.margin, config.size - 1 - 2 * config.margin
    start = rng.uniform(0, span, size=(m, 1, 2))  # (m, 1, 2)
    turns = rng.normal(0, config.turn, size=(m, config.steps - 1))  # (m, steps-1)
    heading = rng.uniform(0, 2 * np.pi, size=(m, 1)) + np.cumsum(turns, axis=1)  # (m, steps-1)
    moves = np.stack([np.sin(heading), np.cos(heading)], axis=-1)  # (m, steps-1, 2)
    points = np.concatenate([start, start + np.cumsum(moves, axis=1)], axis=1)  # (m, steps, 2), unbounded
    folded = span - np.abs(span - np.mod(points, 2 * span))  # (m, steps, 2): reflected into [0, span]
    return low + np.rint(folded).astype(np.int64)  # (m, steps, 2)


def _mark(grid: np.ndarray, pixels: np.ndarray, radius: int, pad: int) -> None:
    """Set every cell of `grid` (padded by `pad`) within Chebyshev distance `radius` of one of
    `pixels` (m, 2)."""
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            grid[pixels[:, 0] + pad + dr, pixels[:, 1] + pad + dc] = True


def _draw_curves(config: PathfinderConfig, rng: np.random.Generator) -> list[np.ndarray] | None:
    """The pixels (steps, 2) of `config.curves` curves that keep their distances, each the first
    of a batch of candidate walks that fits beside the earlier ones; None when a whole batch
    fails (the caller starts the image again).

    Distances: the pixels of two curves are at least `separation` apart, and a curve end (where
    a 3x3 marker may go) at least `separation + 1` from the pixels of every other curve, so a
    marker too is `separation` away from every other curve."""
    size, s = config.size, config.separation
    pad = s + 1
    near_curve = np.zeros((size + 2 * pad, size + 2 * pad), dtype=bool)  # within s - 1 of a curve pixel
    near_end = np.zeros_like(near_curve)  # within s of a curve end
    around_curve = np.zeros_like(near_curve)  # within s of a curve pixel
    curves: list[np.ndarray] = []
    ends = np.zeros((0, 2))  # (2 * curves so far, 2)
    for i in range(config.curves):
        candidates = _walks(config, rng, config.attempts if i else 8)  # (m, steps, 2); the first curve fits easily
        rows, cols = candidates[..., 0] + pad, candidates[..., 1] + pad  # (m, steps) each
        free = ~(near_curve | near_end)[rows, cols].any(axis=1) & ~around_curve[rows[:, [0, -1]],
                                                                              cols[:, [0, -1]]].any(axis=1)  # (m,)
        new_ends = candidates[:, [0, -1]].astype(np.float64)  # (m, 2, 2)
        own = np.abs(new_ends[:, 0] - new_ends[:, 1]).max(axis=-1)  # (m,) Chebyshev
        others = np.abs(new_ends[:, :, None] - ends[None, None]).max(axis=-1)  # (m, 2, ends) Chebyshev
        apart = (own >= config.end_distance) & (others.reshape(len(candidates), -1).min(axis=1, initial=np.inf)
                                                >= config.end_distance)  # (m,)
        fits = np.flatnonzero(free & apart)
        if len(fits) == 0:
            return None
        pixels = candidates[fits[0]]  # (steps, 2)
        curves.append(pixels)
        ends = np.concatenate([ends, pixels[[0, -1]]])  # (2 * curves so far, 2)
        _mark(near_curve, pixels, s - 1, pad)
        _mark(around_curve, pixels, s, pad)
        _mark(near_end, pixels[[0, -1]], s, pad)
    return curves


def render_pathfinder(count: int, config: PathfinderConfig = PathfinderConfig(),
                      seed: int = 0, stream: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` raw images and their labels, half of each class in a seeded order. `stream`
    picks an independent sequence for the same seed (`load_pathfinder` draws its test split
    from stream 1).

    Returns:
        images: (count, size * scale, size * scale) float32: 0 background, PATH_VALUE on curves, MARKER_VALUE on
            the two 3x3 markers.
        labels: (count,) int64, 1 when the markers are joined by a curve.
        markers: (count, 2, 2) int64, the (row, column) of both markers' centres on the drawing
            grid (size x size, before scaling).
    """
    if count < 1:
        raise ValueError(f"render_pathfinder: count must be >= 1, got {count}")
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(count) % 2).astype(np.int64)  # (count,) balanced
    images = np.zeros((count, config.size, config.size), dtype=np.float32)  # (count, size, size)
    markers = np.zeros((count, 2, 2), dtype=np.int64)  # (count, 2, 2)
    on = (np.arange(config.steps) % (config.dash + config.gap)) < config.dash  # (steps,) the dash pattern
    for i in range(count):
        curves = _draw_curves(config, rng)
        for _ in range(MAX_REDRAWS):
            if curves is not None:
                break
            curves = _draw_curves(config, rng)
        else:
            raise RuntimeError(f"render_pathfinder: no image fits {config} after {MAX_REDRAWS} tries; "
                               "use fewer or shorter curves, or a larger size")
        for pixels in curves:
            images[i, pixels[on, 0], pixels[on, 1]] = PATH_VALUE
        # The label is read only now: it decides which curve end the second marker takes.
        first_end, second_end = rng.permutation(2)  # which end of curve 0, which end of curve 1
        first = curves[0][[0, -1][first_end]]  # (2,)
        second = curves[0][[-1, 0][first_end]] if labels[i] else curves[1][[0, -1][second_end]]  # (2,)
        markers[i] = np.stack([first, second])
        for r, c in markers[i]:
            images[i, r - 1 : r + 2, c - 1 : c + 2] = MARKER_VALUE
    images = images.repeat(config.scale, axis=1).repeat(config.scale, axis=2)  # (count, size*scale, size*scale)
    return images, labels, markers


def load_pathfinder(train_size: int = 4096, test_size: int = 1024, config: PathfinderConfig = PathfinderConfig(),
                    seed: int = 0) -> tuple[Split, Split]:
    """Generated Pathfinder images as (train, test) `Split`s (b, 1, size, size), normalised to
    zero mean and unit variance over both splits, as `load_digits` returns the digits. The
    test images are drawn from a stream of their own, so `train_size` does not change them."""
    if train_size < 1 or test_size < 1:
        raise ValueError(f"load_pathfinder: sizes must be >= 1, got {train_size}, {test_size}")
    train_images, train_labels, _ = render_pathfinder(train_size, config, seed=seed, stream=0)
    test_images, test_labels, _ = render_pathfinder(test_size, config, seed=seed, stream=1)
    images = torch.from_numpy(np.concatenate([train_images, test_images]))[:, None]  # (b, 1, size, size)
    images = (images - images.mean()) / images.std()  # (b, 1, size, size)
    labels = torch.from_numpy(np.concatenate([train_labels, test_labels]))  # (b,)
    return (Split(images[:train_size], labels[:train_size]),
            Split(images[train_size:], labels[train_size:]))
