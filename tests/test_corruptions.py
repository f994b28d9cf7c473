"""The CIFAR-10-C corruptions: each checked against a property of its definition (noise variance,
contrast ratio, JPEG quality, ...), repeatable with a seed, uint8 in and out."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from cifar_lightning.errors import ConfigError
from cifar_lightning.robustness.corruptions import (
    BRIGHTNESS_SHIFT,
    CONTRAST_FACTOR,
    CORRUPTIONS,
    FROST_IMAGE_AND_FROST,
    GAUSSIAN_NOISE_SIGMA,
    IMPULSE_NOISE_AMOUNT,
    JPEG_QUALITY,
    SEED_KEYS,
    SEEN_IN_TRAINING,
    SHOT_NOISE_PHOTONS,
    UNSEEN,
    centre_zoom,
    corrupt,
    disk_kernel,
    frost_pictures,
    motion_blur_pixels,
    motion_kernel,
    plasma_fractal,
)

from conftest import synthetic_images


def grey(value: int, n: int = 64) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), value, dtype=torch.uint8)


def natural(n: int = 40) -> torch.Tensor:
    images, _ = synthetic_images(n // 10 or 1, seed=7)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_is_uint8_in_and_out_repeatable_and_grows_with_severity(name):
    images = natural()
    outputs = [corrupt(images, name, severity, seed=3) for severity in (1, 3, 5)]
    for out in outputs:
        assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(outputs[1], corrupt(images, name, 3, seed=3))  # seeded: the same every time
    change = [(out.float() - images.float()).abs().mean().item() for out in outputs]
    if name == "elastic_transform":  # its severity 1 jitters the affine most (2.56 px against 0.96): not monotone,
        assert min(change) > 0, change  # in CIFAR-10-C too (published accuracies rise from severity 1 to 2)
    else:
        assert 0 < change[0] < change[2], change


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_has_the_stated_standard_deviation(severity):
    out = corrupt(grey(128), "gaussian_noise", severity).float() / 255
    assert (out - out.mean()).std().item() == pytest.approx(GAUSSIAN_NOISE_SIGMA[severity - 1], rel=0.03)
    assert torch.ne(corrupt(grey(128), "gaussian_noise", severity, seed=1), corrupt(grey(128), "gaussian_noise", severity)).any()


@pytest.mark.parametrize("severity", [1, 5])
def test_shot_noise_is_poisson(severity):
    photons, level = SHOT_NOISE_PHOTONS[severity - 1], 102 / 255
    out = corrupt(grey(102), "shot_noise", severity).double() / 255
    # A Poisson count of mean level * photons, divided by photons: variance level / photons.
    assert out.var().item() == pytest.approx(level / photons, rel=0.05)
    assert out.mean().item() == pytest.approx(level - 0.5 / 255, abs=2e-3)  # truncation to uint8 takes half a step


@pytest.mark.parametrize("severity", [2, 5])
def test_impulse_noise_sets_the_stated_share_to_black_or_white(severity):
    out = corrupt(grey(100, n=200), "impulse_noise", severity)
    white, black = (out == 255).float().mean().item(), (out == 0).float().mean().item()
    amount = IMPULSE_NOISE_AMOUNT[severity - 1]
    assert white + black == pytest.approx(amount, rel=0.05) and white == pytest.approx(black, rel=0.1)
    assert ((out == 100) | (out == 0) | (out == 255)).all()


@pytest.mark.parametrize("severity", [1, 5])
def test_contrast_scales_each_channel_around_its_mean(severity):
    images = natural()
    out = corrupt(images, "contrast", severity).double()
    x = images.double()
    ratio = (out - out.mean(dim=(2, 3), keepdim=True)).std() / (x - x.mean(dim=(2, 3), keepdim=True)).std()
    assert ratio.item() == pytest.approx(CONTRAST_FACTOR[severity - 1], abs=0.01)
    assert (out.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max() < 1.0


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_raises_hsv_value_and_keeps_hue(severity):
    shift = BRIGHTNESS_SHIFT[severity - 1]
    assert corrupt(grey(100), "brightness", severity).unique().tolist() == [int((100 / 255 + shift) * 255)]
    colour = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()
    out = corrupt(colour, "brightness", severity)[0, :, 0, 0].double()
    value = min(200 / 255 + shift, 1.0) * 255
    assert out[0].item() == int(value) and (out / out[0]).tolist() == pytest.approx([1, 0.5, 0.25], abs=0.01)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_jpeg_is_a_pillow_jpeg_file_of_the_stated_quality(severity):
    images = natural(10)
    out = corrupt(images, "jpeg_compression", severity)
    quality = JPEG_QUALITY[severity - 1]
    for image, result in zip(images, out):
        encoded = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(encoded, format="JPEG", quality=quality)
        with Image.open(encoded) as decoded:
            assert decoded.format == "JPEG"
            # Pillow's quality q scales the standard tables: the file's luminance table is the q-table.
            reference = io.BytesIO()
            Image.new("RGB", (8, 8)).save(reference, format="JPEG", quality=quality)
            assert decoded.quantization[0] == Image.open(reference).quantization[0]
            assert np.array_equal(np.asarray(decoded.convert("RGB")), result.permute(1, 2, 0).numpy())


def test_pixelate_removes_fine_detail():
    stripes = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    stripes[..., ::2] = 255  # one-pixel stripes: all the energy at the finest scale
    kept = [corrupt(stripes, "pixelate", severity).float().std().item() / stripes.float().std().item()
            for severity in (1, 5)]
    assert kept[1] < 0.6 and kept[1] < kept[0]
    assert torch.equal(corrupt(grey(77), "pixelate", 5), grey(77))  # a flat image stays flat


def test_defocus_kernel_is_a_normalised_disk_and_blur_keeps_flat_images():
    for radius, alias in ((0.3, 0.4), (1.5, 0.1)):
        kernel = disk_kernel(radius, alias)
        assert kernel.shape == (17, 17) and kernel.sum() == pytest.approx(1.0)
        assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1])
    assert disk_kernel(1.5, 0.1)[8, 8] < disk_kernel(0.3, 0.4)[8, 8] / 3  # spread wider at severity 5
    # A flat image stays flat (within the truncation to uint8 that the definition ends with).
    assert (corrupt(grey(90), "defocus_blur", 5).int() - 90).abs().max() <= 1
    dot = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    dot[..., 16, 16] = 255
    assert corrupt(dot, "defocus_blur", 5)[0, 0, 16, 16] < 255 / 4  # a point spreads over its disk


def test_zoom_blur_uses_scipys_zoom_and_keeps_the_centre():
    x = np.random.default_rng(0).random((3, 32, 32, 3))
    for factor in (1.0, 1.13, 1.25):
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        expected = []
        for image in x:
            zoomed = ndimage.zoom(image[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
            trim = (zoomed.shape[0] - 32) // 2
            expected.append(zoomed[trim:trim + 32, trim:trim + 32])
        np.testing.assert_allclose(centre_zoom(x, factor), np.stack(expected), atol=1e-12)
    assert torch.equal(corrupt(grey(60), "zoom_blur", 5), grey(60))


def test_fog_adds_a_normalised_spatially_smooth_cloud():
    clouds = plasma_fractal(50, np.random.default_rng(0), decay=2.0)
    assert clouds.shape == (50, 32, 32)
    assert np.allclose(clouds.min(axis=(1, 2)), 0) and np.allclose(clouds.max(axis=(1, 2)), 1)
    neighbours = np.corrcoef(clouds[:, :, :-1].ravel(), clouds[:, :, 1:].ravel())[0, 1]
    assert neighbours > 0.5  # clouds, not white noise
    fogged = corrupt(grey(128), "fog", 3).float()
    assert fogged.std(dim=(2, 3)).mean() > 5  # the cloud shows
    assert torch.equal(corrupt(grey(0), "fog", 5), grey(0))  # scaled by the image's peak: black stays black


def test_the_fifteen_of_cifar10c_with_seen_and_unseen_marked():
    assert len(CORRUPTIONS) == 15 and set(SEED_KEYS) == set(CORRUPTIONS)
    assert set(SEEN_IN_TRAINING) | set(UNSEEN) == set(CORRUPTIONS) and not set(SEEN_IN_TRAINING) & set(UNSEEN)
    # The ten scored first keep the seed keys they had (their position in the old list of ten).
    first_ten = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
                 "contrast", "pixelate", "jpeg_compression")
    assert [SEED_KEYS[name] for name in first_ten] == list(range(10))


def test_glass_blur_moves_pixels_locally_and_keeps_flat_images():
    assert (corrupt(grey(100), "glass_blur", 5).int() - 100).abs().max() <= 1
    dot = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    dot[..., 12:20, 12:20] = 255
    out = corrupt(dot, "glass_blur", 5).float()
    assert out[..., :8, :].max() == 0 and out[..., 24:, :].max() == 0  # nothing travels far
    assert 0 < (out[0, 0] > 127).sum() and (out[0, 0] != dot[0, 0].float()).any()


@pytest.mark.parametrize("angle", [0.0, 90.0, -30.0])
def test_motion_kernel_is_imagemagicks_one_sided_half_gaussian(angle):
    weights, rows, cols = motion_kernel(6, 2.0, angle)
    assert len(weights) == 13 and weights.sum() == pytest.approx(1.0) and np.all(np.diff(weights) < 0)
    assert rows[0] == cols[0] == 0  # the pixel itself has the largest weight
    theta = np.deg2rad(angle)
    np.testing.assert_array_equal(cols, np.ceil(np.arange(13) * np.cos(theta) - 0.5))
    np.testing.assert_array_equal(rows, np.ceil(np.arange(13) * np.sin(theta) - 0.5))


def test_motion_blur_smears_a_point_along_one_side_only():
    dot = np.zeros((1, 32, 32, 1), dtype=np.uint8)
    dot[0, 16, 16] = 255
    out = motion_blur_pixels(dot, 6, 2.0, np.array([0.0]))[0, :, :, 0]
    # Pixel (16, c) averages (16, c .. c+12): the point shows in the 13 pixels up to and left of it.
    assert set(np.nonzero(out)[0]) == {16} and np.nonzero(out)[1].max() == 16 and np.nonzero(out)[1].min() >= 4
    flat = np.full((2, 32, 32, 3), 80, dtype=np.uint8)
    assert np.array_equal(motion_blur_pixels(flat, 9, 2.5, np.array([10.0, -40.0])), flat)


def test_snow_brightens_and_streaks():
    out = [corrupt(grey(60), "snow", severity).float() for severity in (1, 5)]
    assert 60 < out[0].mean() < out[1].mean()
    assert out[1].std(dim=(2, 3)).mean() > 10  # flakes, not an even wash


def test_frost_blends_a_crop_of_one_of_the_five_pictures():
    pictures = frost_pictures()
    assert len(pictures) == 5 and all(p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) > 32 for p in pictures)
    out = corrupt(grey(0), "frost", 5).float() / 255
    image_weight, frost_weight = FROST_IMAGE_AND_FROST[4]
    lightest = max(p.max() for p in pictures) / 255
    assert out.max() <= frost_weight * lightest + 1 / 255 and out.mean() > 0.05  # black image: frost alone shows


def test_elastic_transform_keeps_flat_images_and_moves_detail_a_little():
    assert (corrupt(grey(140), "elastic_transform", 4).int() - 140).abs().max() <= 1
    stripes = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    stripes[..., ::4] = 255
    for severity in (1, 5):
        out = corrupt(stripes, "elastic_transform", severity).float()
        moved = (out - stripes.float()).abs().mean().item()
        assert 5 < moved and abs(out.mean().item() - stripes.float().mean().item()) < 20


def test_unknown_corruption_or_severity_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unknown corruption 'snowstorm'"):
        corrupt(grey(1), "snowstorm", 1)
    with pytest.raises(ConfigError, match="severity must be 1, 2, 3, 4 or 5"):
        corrupt(grey(1), "fog", 6)


def test_eval_corruption_changes_the_evaluated_images_only(image_folder):
    from cifar_lightning import CIFAR10DataModule

    plain = CIFAR10DataModule(str(image_folder), val_size=50, cache_dir=None)
    foggy = CIFAR10DataModule(str(image_folder), val_size=50, cache_dir=None, eval_corruption="fog", eval_severity=4)
    for data in (plain, foggy):
        data.setup("fit")
        data.setup("test")
    assert torch.equal(foggy.train_set.images, plain.train_set.images)
    assert torch.equal(foggy.val_set.images, corrupt(plain.val_set.images, "fog", 4, seed=0))
    assert torch.equal(foggy.test_set.images, corrupt(plain.test_set.images, "fog", 4, seed=0))
    with pytest.raises(ConfigError, match="not both"):
        CIFAR10DataModule(eval_corruption="fog", eval_jpeg_quality=75)


def test_the_cli_names_an_unknown_corruption_in_one_line(image_folder, capsys):
    from cli_runner import run_failing

    message = run_failing(["test", "--data.data_dir", str(image_folder), "--data.eval_corruption", "hail"], capsys)
    assert "Unknown corruption 'hail'" in message and "gaussian_noise" in message
