"""The generated Pathfinder task (`vmamba_ref.tools.pathfinder`): deterministic, balanced,
correctly labelled (checked by flood fill over the drawn ink), with the same local statistics
in both classes; and the baselines the long-range example compares (`vmamba_ref.tools.baselines`).
"""

import numpy as np
import pytest
import torch

from vmamba_ref import SS2DConfig, ss2d_core, vmamba_mini
from vmamba_ref.ss2d import SS2D
from vmamba_ref.tools.baselines import SmallCNN, SmallViT, remove_scan, skip_only_core
from vmamba_ref.tools.data import Split
from vmamba_ref.tools.pathfinder import (
    MARKER_VALUE,
    PATH_VALUE,
    PathfinderConfig,
    load_pathfinder,
    render_pathfinder,
)
from vmamba_ref.tools.train import TrainConfig, fit

CONFIGS = [
    PathfinderConfig(),  # 32x32, three curves of eight dashes
    PathfinderConfig(size=16, scale=2, curves=2, dashes=4, margin=1, end_distance=5),  # the example's
]
BRIDGE = 2  # a flood fill steps to ink up to 2 pixels away (Chebyshev): across a dash gap


def components(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected pieces of the ink of one raw image on its drawing grid, gaps bridged: a flood
    fill from every unvisited ink pixel. -> (piece index per pixel, 0 off the ink; count)."""
    ink = image > 0
    pieces = np.zeros(image.shape, dtype=np.int64)
    count = 0
    for start in zip(*np.nonzero(ink), strict=True):
        if pieces[start]:
            continue
        count += 1
        pieces[start], stack = count, [start]
        while stack:
            r, c = stack.pop()
            for rr in range(max(r - BRIDGE, 0), min(r + BRIDGE + 1, image.shape[0])):
                for cc in range(max(c - BRIDGE, 0), min(c + BRIDGE + 1, image.shape[1])):
                    if ink[rr, cc] and not pieces[rr, cc]:
                        pieces[rr, cc] = count
                        stack.append((rr, cc))
    return pieces, count


@pytest.mark.parametrize("config", CONFIGS)
def test_every_label_matches_a_flood_fill_between_the_markers(config):
    images, labels, markers = render_pathfinder(300, config, seed=3)
    grid = images[:, :: config.scale, :: config.scale]  # (b, size, size): undo the scaling
    for image, label, ((r0, c0), (r1, c1)) in zip(grid, labels, markers, strict=True):
        pieces, count = components(image)
        assert count == config.curves  # every curve one piece, no two curves touching
        assert image[r0, c0] == MARKER_VALUE and image[r1, c1] == MARKER_VALUE
        assert (pieces[r0, c0] == pieces[r1, c1]) == bool(label)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_two_classes_have_the_same_ink(config):
    images, labels, markers = render_pathfinder(1000, config, seed=1)
    grid = images[:, :: config.scale, :: config.scale]  # (b, size, size)
    marker_ink = (grid == MARKER_VALUE).sum(axis=(1, 2))  # (b,)
    assert (marker_ink == 18).all()  # two 3x3 markers, never overlapping, in every image
    path = (grid == PATH_VALUE).sum(axis=(1, 2)).astype(float)  # (b,)
    positive, negative = path[labels == 1], path[labels == 0]
    standard_error = np.sqrt(positive.var() / len(positive) + negative.var() / len(negative))
    assert abs(positive.mean() - negative.mean()) < 4 * standard_error
    # what a marker sees: the ink of the 9x9 window around it, on average the same in both classes
    windows = np.stack([np.pad(g, 4)[r : r + 9, c : c + 9] for g, m in zip(grid, markers, strict=True) for r, c in m])
    per_image = windows.reshape(len(grid), 2, 81).sum(axis=(1, 2))  # (b,)
    positive, negative = per_image[labels == 1], per_image[labels == 0]
    standard_error = np.sqrt(positive.var() / len(positive) + negative.var() / len(negative))
    assert abs(positive.mean() - negative.mean()) < 4 * standard_error


def test_a_seed_gives_the_same_images_and_another_seed_others():
    first, labels, markers = render_pathfinder(50, seed=7)
    again, labels_again, markers_again = render_pathfinder(50, seed=7)
    other, _, _ = render_pathfinder(50, seed=8)
    assert np.array_equal(first, again) and np.array_equal(labels, labels_again)
    assert np.array_equal(markers, markers_again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("count", [1, 2, 7, 100])
def test_labels_are_balanced(count):
    _, labels, _ = render_pathfinder(count, CONFIGS[1], seed=0)
    assert labels.sum() in (count // 2, (count + 1) // 2)
    assert set(labels.tolist()) <= {0, 1}


def test_load_pathfinder_returns_normalised_splits():
    train, test = load_pathfinder(64, 32, CONFIGS[1], seed=0)
    assert isinstance(train, Split) and isinstance(test, Split)
    assert train.images.shape == (64, 1, 32, 32) and test.images.shape == (32, 1, 32, 32)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    both = torch.cat([train.images, test.images])
    assert abs(float(both.mean())) < 1e-4 and abs(float(both.std()) - 1) < 1e-3
    assert int(train.labels.sum()) == 32 and int(test.labels.sum()) == 16
    _, test_again = load_pathfinder(16, 32, CONFIGS[1], seed=0)
    assert torch.equal(test_again.labels, test.labels)  # the test stream does not depend on train_size


@pytest.mark.parametrize("field, value", [("size", 8), ("curves", 1), ("gap", 2), ("separation", 2),
                                          ("scale", 0), ("margin", 0), ("dashes", 0), ("turn", -1.0),
                                          ("end_distance", 4.0)])
def test_bad_configs_are_refused(field, value):
    with pytest.raises(ValueError, match=field if field not in ("dashes", "turn") else "needs"):
        PathfinderConfig(**{field: value})


def test_an_impossible_config_raises_instead_of_looping():
    with pytest.raises(RuntimeError, match="no image fits"):
        render_pathfinder(1, PathfinderConfig(size=12, curves=6, dashes=8, attempts=1))


def test_fit_trains_on_pathfinder():
    train, test = load_pathfinder(32, 16, CONFIGS[1], seed=0)
    torch.manual_seed(0)
    model = SmallCNN(in_chans=1, num_classes=2, dims=(8, 8, 8, 8))
    history = fit(model, train, test, TrainConfig(epochs=1, batch_size=16, shift=0), progress=False)
    assert len(history.step_loss) == 2 and 0 <= history.epoch_accuracy[-1] <= 1


def test_skip_only_core_is_ss2d_core_with_C_zero():
    torch.manual_seed(0)
    b, k, d, n, h, w = 2, 4, 3, 2, 5, 4
    x = torch.randn(b, d, h, w, dtype=torch.float64)
    delta, A = torch.randn(b, k, d, h, w, dtype=torch.float64), -torch.rand(k * d, n, dtype=torch.float64)
    B, C = torch.randn(b, k, n, h, w, dtype=torch.float64), torch.zeros(b, k, n, h, w, dtype=torch.float64)
    D, bias = torch.randn(k * d, dtype=torch.float64), torch.randn(k * d, dtype=torch.float64)
    expected = ss2d_core(x, delta, A, B, C, D, bias, True)  # (b, d, h, w)
    torch.testing.assert_close(skip_only_core(x, delta, A, B, C + 1, D, bias, True), expected)
    assert torch.equal(skip_only_core(x, delta, A, B, C, None), torch.zeros_like(x))


def test_remove_scan_cuts_what_the_scan_carries():
    torch.manual_seed(0)
    model = vmamba_mini(backend="ref", in_chans=1, num_classes=2, ssm=SS2DConfig(d_state=2)).eval()
    images = torch.randn(2, 1, 32, 32)
    with_scan = model(images)  # (b, classes)
    assert remove_scan(model) is model
    mixers = [m for m in model.modules() if isinstance(m, SS2D)]
    assert mixers and all(m.ops.ss2d_core is skip_only_core for m in mixers)
    without = model(images)  # (b, classes)
    assert not torch.allclose(with_scan, without)
    with torch.no_grad():  # A, B, C and the step sizes no longer matter
        for m in mixers:
            m.A_logs.add_(1.0)
            m.x_proj_weight.mul_(3.0)
    torch.testing.assert_close(model(images), without)
    with pytest.raises(ValueError, match="holds no SS2D"):
        remove_scan(SmallCNN())


def test_the_baselines_classify():
    images = torch.randn(3, 1, 32, 32)
    assert SmallCNN(in_chans=1, num_classes=2)(images).shape == (3, 2)
    assert SmallViT(in_chans=1, num_classes=2, image_size=32)(images).shape == (3, 2)
    with pytest.raises(ValueError, match="multiple"):
        SmallViT(image_size=30, patch=4)
