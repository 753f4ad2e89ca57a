"""The effective receptive field (ERF): how much each input pixel moves the central output.

VMamba section 5.4 and figure 1 compare the ERFs of CNNs, ViTs and VMamba before and after
training; the method is RepLKNet's (Ding et al. 2022, appendix C), as in the official
`analyze/erf.py`. For each image x (1, 3, H, W) and a backbone whose feature map is
f(x) (1, c, h, w):

    g   = d/dx  sum_c relu(f(x)[0, c, h//2, w//2])      gradient of the central position
    m_x = sum over batch and input channels of relu(g)   (H, W), one map per image
    m   = mean of m_x over the images whose map is finite (NaN maps are skipped)
    ERF = m ** 0.2 / max(m ** 0.2)                        the official `simpnorm`, in [0, 1]

The backbone is `model.forward_features` (stem and stages, no classifier), the convention of
VMamba and timm. The paper uses 50 ImageNet validation images at 1024x1024; the helpers here
read photos that ship with scikit-image (or a folder of your own) and prepare them the same
way: bicubic resize of the shorter side, centre crop, ImageNet normalisation.

The model is measured in evaluation mode (set for the measurement, restored afterwards), so
stochastic depth is off.

Official implementation: `analyze/erf.py` and `EffectiveReceiptiveField` in VMamba's
`analyze/utils.py`. Deviation: the plot is drawn with matplotlib (the official one with
seaborn's `heatmap(cmap="RdYlGn", center=0)`; the colours are the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vmamba_ref.tools.plots import _pyplot

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = 0.449, 0.226  # the ImageNet statistics averaged over RGB, for 1-channel models

SAMPLE_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "moon",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "gravel",
)
"""Photographs bundled inside the scikit-image package (`skimage.data`), read without download."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ERF:
    """An effective receptive field averaged over images.

    Attributes:
        map: the normalised ERF `mean ** 0.2 / max`, (H, W) float32 in [0, 1].
        mean_gradient: the average of relu(input gradient) over the images used, (H, W).
        used: images that entered the average.
        skipped: images left out because their gradient map held NaN or inf.
    """

    map: torch.Tensor
    mean_gradient: torch.Tensor
    used: int
    skipped: int


def sample_photos(names: Sequence[str] = SAMPLE_PHOTOS) -> list[np.ndarray]:
    """Photographs from scikit-image's bundled samples, as (H, W) or (H, W, 3) uint8 arrays.

    Needs scikit-image (`pip install 'vmamba[examples]'`); the images listed in
    `SAMPLE_PHOTOS` ship inside the package, so nothing is downloaded.
    """
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("the sample photos need scikit-image: pip install 'vmamba[examples]'") from error
    photos = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"sample_photos: skimage.data has no image {name!r}; try one of {list(SAMPLE_PHOTOS)}")
        photos.append(np.asarray(loader()))
    return photos


def folder_images(folder: str | Path) -> list[np.ndarray]:
    """Every image file in `folder` (sorted by name; suffixes in `IMAGE_SUFFIXES`) as an array."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder_images: {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"folder_images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    try:
        from skimage.io import imread
    except ImportError as error:
        raise ImportError("reading image files needs scikit-image: pip install 'vmamba[examples]'") from error
    return [np.asarray(imread(p)) for p in paths]


def prepare_image(image: np.ndarray, resolution: int, channels: int = 3) -> torch.Tensor:
    """An image as the paper feeds it: bicubic resize of the shorter side to `resolution`, centre
    crop to a square, scale to [0, 1], normalise with the ImageNet mean and std.

    Args:
        image: (H, W), (H, W, 3) or (H, W, 4) array; uint8 in [0, 255], bool, or float in [0, 1].
            An alpha channel is dropped.
        resolution: side of the square output.
        channels: 3 (grey images are repeated) or 1 (colour images are converted to luma,
            ITU-R 601, and normalised with the mean of the ImageNet statistics).

    Returns:
        (channels, resolution, resolution) float32.
    """
    if resolution < 1:
        raise ValueError(f"prepare_image: resolution must be positive, got {resolution}")
    if channels not in (1, 3):
        raise ValueError(f"prepare_image: channels must be 1 or 3, got {channels}")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"prepare_image: image must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = array.astype(np.float32)
    x = torch.from_numpy(array)
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)  # (1 or 3, H, W)
    if channels == 3:
        x = x.expand(3, -1, -1)  # (3, H, W)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)  # (3,) each
    else:
        if x.shape[0] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)  # (3, H, W) -> (1, H, W)
        mean, std = torch.tensor([GRAY_MEAN]), torch.tensor([GRAY_STD])  # (1,) each
    h, w = x.shape[1:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]  # (ch, h', w')
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, top : top + resolution, left : left + resolution]  # (ch, res, res)
    return ((x.clamp(0, 1) - mean[:, None, None]) / std[:, None, None]).contiguous()  # (ch, res, res)


def _features(model: nn.Module):
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features):
        raise TypeError(
            f"the ERF needs a backbone: `model` ({type(model).__name__}) must have a "
            "forward_features(x) method returning the (b, c, h, w) feature map, as VMamba does"
        )
    return forward_features


def input_gradient_map(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """relu of the gradient of the central output position w.r.t. one image, summed over
    channels: the per-image map m_x of the module docstring.

    Args:
        model: a backbone with `forward_features`, in the mode you want it measured in.
        image: (c, H, W) or (1, c, H, W).

    Returns:
        (H, W) float32; may hold NaN, which `effective_receptive_field` skips.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"input_gradient_map: `image` must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]  # (1, c, H, W)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"input_gradient_map: `image` must be (c, H, W) or (1, c, H, W), got {tuple(image.shape)}")
    x = image.detach().to(torch.float32).requires_grad_(True)  # (1, c, H, W)
    out = _features(model)(x)  # (1, c_out, h, w)
    if out.dim() != 4:
        raise ValueError(
            f"input_gradient_map: forward_features must return (b, c, h, w), got {tuple(out.shape)}"
        )
    h, w = out.shape[2:]
    objective = torch.relu(out[:, :, h // 2, w // 2]).sum()  # central position, summed over channels
    (grad,) = torch.autograd.grad(objective, x)  # (1, c, H, W)
    return torch.relu(grad).sum(dim=(0, 1))  # (H, W)


def simple_normalise(erf: torch.Tensor) -> torch.Tensor:
    """The official `simpnorm`: erf ** 0.2 divided by its maximum, so the map lies in [0, 1]."""
    if not torch.isfinite(erf).all() or (erf < 0).any():
        raise ValueError("simple_normalise: the map must be finite and non-negative")
    scaled = erf**0.2
    peak = scaled.max()
    if peak <= 0:
        raise ValueError(
            "simple_normalise: the map is zero everywhere (the central output does not depend on "
            "the input, or every gradient was negative)"
        )
    return scaled / peak


def effective_receptive_field(
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    progress: bool = False,
) -> ERF:
    """The ERF of `model` averaged over `images`, as in the paper (module docstring).

    Args:
        model: a backbone with `forward_features(x) -> (b, c, h, w)` (VMamba, or any model
            following timm's convention). It is measured in evaluation mode and its mode is
            restored afterwards; its parameters' gradients are not touched.
        images: prepared images, one at a time (batch size 1, as the paper): a (b, c, H, W)
            tensor or an iterable of (c, H, W) tensors, all of one size (see `prepare_image`).
        progress: show a progress bar over the images.

    Returns:
        an `ERF` whose `map` is (H, W) in [0, 1].

    Raises:
        ValueError: no images, images of different sizes, or every map held NaN.
    """
    _features(model)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"effective_receptive_field: an `images` tensor must be (b, c, H, W), got {tuple(images.shape)}"
            )
        images = images.unbind(0)
    images = list(images)
    if not images:
        raise ValueError("effective_receptive_field: `images` is empty")
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"effective_receptive_field: all images must have one size, got {sorted(sizes)}")
    was_training = model.training
    model.eval()
    total, used, skipped = None, 0, 0
    try:
        for image in tqdm(images, desc="ERF", unit="image", disable=not progress):
            grad_map = input_gradient_map(model, image)  # (H, W)
            if not torch.isfinite(grad_map).all():
                skipped += 1
                continue
            total = grad_map if total is None else total + grad_map  # (H, W)
            used += 1
    finally:
        model.train(was_training)
    if total is None:
        raise ValueError(f"effective_receptive_field: all {skipped} gradient maps held NaN or inf")
    mean = total / used  # (H, W)
    return ERF(map=simple_normalise(mean), mean_gradient=mean, used=used, skipped=skipped)


def _erf_colormap():
    """RdYlGn as seaborn's `heatmap(center=0)` shows data in [0, 1]: the colour map is centred at
    0, so only its upper half (yellow to green) is used."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps["RdYlGn"](np.linspace(0.5, 1.0, 256)), name="RdYlGn_centred")


def plot_erf(
    maps: Mapping[str, torch.Tensor],
    path: str | Path,
    ncols: int | None = None,
    title: str | None = None,
    panel_size: float = 3.0,
) -> Path:
    """Paper-style ERF heatmaps: one panel per map, titled by its key, in a grid of `ncols`
    columns; RdYlGn centred at 0, one shared colour scale [0, 1], no ticks, one colour bar.

    Args:
        maps: panel title -> normalised ERF (H, W) (e.g. `ERF.map`), drawn in order.
        path: where to write the PNG (folders are created).
        ncols: panels per row; default all in one row.
        title: figure title.
        panel_size: side of one panel in inches.

    Returns:
        the path written.
    """
    if not maps:
        raise ValueError("plot_erf: `maps` is empty")
    for name, erf in maps.items():
        if not isinstance(erf, torch.Tensor) or erf.dim() != 2:
            raise ValueError(f"plot_erf: map {name!r} must be a 2-D tensor (H, W)")
    plt = _pyplot()
    ncols = len(maps) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"plot_erf: ncols must be positive, got {ncols}")
    nrows = math.ceil(len(maps) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols + 1.0, panel_size * nrows + (0.5 if title else 0.2)),
        squeeze=False, layout="constrained",
    )
    cmap = _erf_colormap()
    image = None
    for ax, (name, erf) in zip(axes.flat, maps.items(), strict=False):
        image = ax.imshow(erf.detach().cpu().numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(maps) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
