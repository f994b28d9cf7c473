"""Common image corruptions at five severities, as CIFAR-10-C defines them (Hendrycks & Dietterich
2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"), for
scoring how a model holds up on the noisy, blurred, dim or compressed pictures people send.

The parameters are those of the authors' generation script for 32x32 images
(hendrycks/robustness, ``ImageNet-C/create_c/make_cifar_c.py``); the operations are written here
with numpy, scipy and Pillow. Like the script, each works on the image in [0, 1] and the result
is truncated to uint8. Random corruptions draw from a generator seeded by (seed, corruption,
severity), so a score is repeatable and independent of the other corruptions scored with it.

``corrupt(images, name, severity, seed)`` takes and returns uint8 ``(N, 3, 32, 32)`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from cifar_lightning.errors import ConfigError
from cifar_lightning.jpeg import reencode_jpeg

# Severity 1-5 parameters, from the authors' script for CIFAR-10.
GAUSSIAN_NOISE_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE_PHOTONS = (500, 250, 100, 75, 50)
IMPULSE_NOISE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
DEFOCUS_RADIUS_AND_ALIAS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
ZOOM_BLUR_FACTORS = tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26))
FOG_STRENGTH_AND_DECAY = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
BRIGHTNESS_SHIFT = (0.05, 0.1, 0.15, 0.2, 0.3)
CONTRAST_FACTOR = (0.75, 0.5, 0.4, 0.3, 0.15)
PIXELATE_SCALE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation 0.04-0.10."""
    return x + rng.normal(scale=GAUSSIAN_NOISE_SIGMA[severity - 1], size=x.shape)


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon) noise: each value is a photon count at 500 down to 50 photons for full scale."""
    photons = SHOT_NOISE_PHOTONS[severity - 1]
    return rng.poisson(x * photons) / photons


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise: a share (1-7%) of the values, per channel, set to 0 or 1 alike."""
    flipped = rng.random(x.shape) < IMPULSE_NOISE_AMOUNT[severity - 1]
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


def _mirror_correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each image's channels correlated with a 2-D kernel, edges mirrored without repeating the edge
    pixel (OpenCV's default border); x is (N, H, W, C)."""
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """A normalised disk of ``radius`` on a 17x17 grid, softened by a 3x3 Gaussian of ``alias_blur``."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-(np.arange(3) - 1.0) ** 2 / (2 * alias_blur ** 2))
    taps /= taps.sum()
    return ndimage.correlate1d(ndimage.correlate1d(disk, taps, axis=0, mode="mirror"), taps, axis=1, mode="mirror")


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Out of focus: each channel convolved with a (softened) disk of radius 0.3-1.5 pixels."""
    return _mirror_correlate(x, disk_kernel(*DEFOCUS_RADIUS_AND_ALIAS_BLUR[severity - 1]))


def centre_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Images (N, H, H, C) zoomed in by ``factor`` about the centre, same size: the centre crop
    resized by ``scipy.ndimage.zoom`` (linear), then trimmed to the size.

    Linear interpolation is separable, so the zoom is one matrix per axis, and those are scipy's own
    1-D weights (the zoom of an identity matrix): exactly scipy's result for a whole batch at once,
    far faster than zooming the 4-D array.
    """
    size = x.shape[1]
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    weights = ndimage.zoom(np.eye(crop), (factor, 1), order=1)  # (zoomed, crop)
    trim = (weights.shape[0] - size) // 2
    weights = weights[trim:trim + size]
    return np.einsum("ip,npqc,jq->nijc", weights, x[:, top:top + crop, top:top + crop], weights, optimize=True)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Zooming while the shutter is open: the mean of the image and its zooms by 1.00 up to 1.05-1.25."""
    factors = ZOOM_BLUR_FACTORS[severity - 1]
    total = sum(centre_zoom(x, factor) for factor in factors)
    return (x + total) / (len(factors) + 1)


def plasma_fractal(count: int, rng: np.random.Generator, size: int = 32, decay: float = 3.0) -> np.ndarray:
    """``count`` cloud-like height maps (count, size, size) in [0, 1], by the diamond-square algorithm on
    a torus: each midpoint is the mean of its four neighbours plus a random offset whose range
    shrinks by ``decay`` at every finer level. ``size`` is a power of two."""
    maps = np.zeros((count, size, size))
    step, wibble = size, 100.0

    def midpoint(neighbour_sum: np.ndarray) -> np.ndarray:
        return neighbour_sum / 4 + wibble * rng.uniform(-wibble, wibble, neighbour_sum.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        # Squares: the centre of each square from its four corners.
        square_sum = corners + np.roll(corners, -1, axis=1)
        square_sum = square_sum + np.roll(square_sum, -1, axis=2)
        maps[:, half::step, half::step] = midpoint(square_sum)
        # Diamonds: each edge midpoint from the two corners and the two centres beside it.
        centres = maps[:, half::step, half::step]
        horizontal = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0::step, half::step] = midpoint(horizontal)
        vertical = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half::step, 0::step] = midpoint(vertical)
        step, wibble = half, wibble / decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Fog: a plasma-fractal cloud of strength 0.2-1.5 added, then scaled back to the image's peak."""
    strength, decay = FOG_STRENGTH_AND_DECAY[severity - 1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    clouds = plasma_fractal(len(x), rng, size=x.shape[1], decay=decay)[..., None]
    return (x + strength * clouds) * peak / (peak + strength)


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Brighter: HSV value raised by 0.05-0.3 (clipped at 1), hue and saturation kept.

    With hue and saturation fixed, every channel scales with the value, so this is the HSV round
    trip in closed form; black pixels (value 0, no hue) become grey of the new value.
    """
    value = x.max(axis=-1, keepdims=True)
    raised = np.minimum(value + BRIGHTNESS_SHIFT[severity - 1], 1.0)
    return np.where(value > 0, x * raised / np.where(value > 0, value, 1.0), raised)


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Lower contrast: each channel's distance from its mean scaled by 0.75 down to 0.15."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * CONTRAST_FACTOR[severity - 1] + mean


def pixelate(images: Tensor, severity: int) -> Tensor:
    """Low resolution: box-filtered down to 95-65% of the size by Pillow, then box-filtered back up."""
    size = images.shape[-1]
    small = int(size * PIXELATE_SCALE[severity - 1])
    out = torch.empty_like(images)
    for i, pixels in enumerate(images.permute(0, 2, 3, 1).numpy()):
        image = Image.fromarray(pixels).resize((small, small), Image.Resampling.BOX)
        out[i] = torch.from_numpy(np.asarray(image.resize((size, size), Image.Resampling.BOX)).copy()).permute(2, 0, 1)
    return out


def jpeg_compression(images: Tensor, severity: int) -> Tensor:
    """JPEG compression by Pillow at quality 80, 65, 58, 50, 40 (``jpeg.reencode_jpeg``)."""
    return reencode_jpeg(images, JPEG_QUALITY[severity - 1])


# Corruptions on floats in [0, 1] (with the seeded generator), and on uint8 images through Pillow.
FLOAT_CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
}
PILLOW_CORRUPTIONS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
CORRUPTIONS = (*FLOAT_CORRUPTIONS, *PILLOW_CORRUPTIONS)  # the ten scored, in CIFAR-10-C's order by family
SEVERITIES = (1, 2, 3, 4, 5)


def check_corruption(name: str | None, severity: int) -> None:
    """A clear ``ConfigError`` for an unknown corruption or a severity outside 1-5."""
    if name is not None and name not in CORRUPTIONS:
        raise ConfigError(f"Unknown corruption {name!r}: choose one of {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ConfigError(f"A corruption's severity must be 1, 2, 3, 4 or 5, got {severity}.")


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """uint8 images (N, 3, H, W) -> the same images with corruption ``name`` at ``severity`` (1-5).

    The same (images, name, severity, seed) always give the same result.
    """
    check_corruption(name, severity)
    if name in PILLOW_CORRUPTIONS:
        return PILLOW_CORRUPTIONS[name](images, severity)
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity])
    changed = FLOAT_CORRUPTIONS[name](images.permute(0, 2, 3, 1).numpy() / 255.0, severity, rng)
    out = (np.clip(changed, 0, 1) * 255).astype(np.uint8)  # truncated, as the authors' script stores them
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
