"""The effective receptive field (vmamba_ref.tools.erf) and the `vmamba erf` command."""

import numpy as np
import pytest
import torch
from torch import nn

from vmamba_ref import vmamba_mini
from vmamba_ref.tools.cli import main
from vmamba_ref.tools.erf import (
    ERF,
    effective_receptive_field,
    input_gradient_map,
    prepare_image,
    sample_photos,
    simple_normalise,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class OneConv(nn.Module):
    """A backbone with a known receptive field: one 3x3 convolution of ones, stride 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward_features(self, x):
        return self.conv(x)  # (b, 1, H, W)


class NaNOnBlank(OneConv):
    """Returns NaN for an all-zero image (0/0 in the forward and the backward)."""

    def forward_features(self, x):
        return self.conv(x) * (x.sum() / x.sum())


@pytest.fixture(scope="module")
def photos():
    return [prepare_image(p, 64) for p in sample_photos()[:4]]


@pytest.fixture(scope="module")
def random_vmamba_erf(photos):
    torch.manual_seed(0)
    return effective_receptive_field(vmamba_mini(backend="ref"), photos)


def test_erf_of_one_convolution_is_its_3x3_window():
    image = torch.rand(1, 9, 9) + 0.1  # positive, so the central output is positive
    erf = effective_receptive_field(OneConv(), [image])
    expected = torch.zeros(9, 9)
    expected[3:6, 3:6] = 1.0  # the centre (4, 4) and its neighbours
    assert torch.equal(erf.map, expected), erf.map
    assert erf.used == 1 and erf.skipped == 0


def test_erf_of_random_vmamba_has_the_input_shape_and_range(random_vmamba_erf):
    erf = random_vmamba_erf
    assert isinstance(erf, ERF)
    assert erf.map.shape == (64, 64) and erf.mean_gradient.shape == (64, 64)
    assert torch.isfinite(erf.map).all()
    assert (erf.map >= 0).all()
    assert erf.map.max() == 1.0
    assert erf.used == 4 and erf.skipped == 0


def test_erf_of_random_vmamba_peaks_at_the_centre(random_vmamba_erf):
    # The central output position of the 2x2 map sits on input pixel 32 (stride-2 convolutions
    # with padding 1 centre output i on input 2i), the middle of a 64x64 image.
    grad = random_vmamba_erf.mean_gradient
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centroid = ((grad * rows).sum() / grad.sum(), (grad * cols).sum() / grad.sum())
    assert all(abs(float(c) - 31.5) < 3 for c in centroid), centroid
    peak_row, peak_col = divmod(int(random_vmamba_erf.map.argmax()), 64)
    assert 16 <= peak_row < 48 and 16 <= peak_col < 48, (peak_row, peak_col)
    erf = random_vmamba_erf.map
    assert erf[16:48, 16:48].mean() > erf.mean()


def test_erf_skips_images_whose_map_holds_nan():
    images = [torch.rand(1, 5, 5) + 0.1, torch.zeros(1, 5, 5), torch.rand(1, 5, 5) + 0.1]
    erf = effective_receptive_field(NaNOnBlank(), images)
    assert erf.used == 2 and erf.skipped == 1
    assert torch.isfinite(erf.map).all()
    with pytest.raises(ValueError, match="all 1 gradient maps held NaN"):
        effective_receptive_field(NaNOnBlank(), [torch.zeros(1, 5, 5)])


def test_erf_restores_the_training_mode_and_leaves_parameter_gradients_alone():
    model = vmamba_mini(backend="ref").train()
    effective_receptive_field(model, torch.randn(1, 3, 32, 32))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_erf_refuses_a_model_without_forward_features_and_bad_images():
    with pytest.raises(TypeError, match="forward_features"):
        effective_receptive_field(nn.Conv2d(3, 3, 3), [torch.randn(3, 8, 8)])
    with pytest.raises(ValueError, match=r"\(c, H, W\) or \(1, c, H, W\)"):
        input_gradient_map(OneConv(), torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="one size"):
        effective_receptive_field(OneConv(), [torch.rand(1, 5, 5), torch.rand(1, 6, 6)])
    with pytest.raises(ValueError, match="empty"):
        effective_receptive_field(OneConv(), [])


def test_simple_normalise_is_the_fifth_root_over_its_max():
    raw = torch.tensor([[0.0, 1.0], [32.0, 243.0]])
    torch.testing.assert_close(simple_normalise(raw), torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    with pytest.raises(ValueError, match="zero everywhere"):
        simple_normalise(torch.zeros(2, 2))


def test_prepare_image_crops_the_centre_and_normalises():
    gray = np.full((40, 80), 255, dtype=np.uint8)
    x = prepare_image(gray, 16)
    assert x.shape == (3, 16, 16)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[:, 8, 8], expected)
    colour = np.zeros((30, 20, 3), dtype=np.uint8)
    assert prepare_image(colour, 10, channels=1).shape == (1, 10, 10)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        prepare_image(colour, 10, channels=2)


def test_cli_writes_a_png_for_sample_photos(tmp_path, capsys):
    out = tmp_path / "erf.png"
    args = ["erf", "vmamba_mini", "--resolution", "32", "--num-images", "2", "--backend", "ref", "--out", str(out)]
    assert main(args) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert "averaged 2 images" in capsys.readouterr().out


def test_cli_reads_a_folder_and_a_checkpoint(tmp_path, capsys):
    import matplotlib.pyplot as plt

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        plt.imsave(folder / f"{i}.png", np.random.default_rng(i).random((40, 40)), cmap="gray")
    torch.manual_seed(1)
    checkpoint = tmp_path / "mini.pth"
    torch.save(vmamba_mini(in_chans=1, num_classes=10).state_dict(), checkpoint)
    out = tmp_path / "erf.png"
    args = ["erf", "vmamba_mini", "--checkpoint", str(checkpoint), "--in-chans", "1", "--num-classes", "10",
            "--images", str(folder), "--resolution", "32", "--backend", "ref", "--out", str(out)]
    assert main(args) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    text = capsys.readouterr().out
    assert "mini.pth" in text and "averaged 2 images" in text
