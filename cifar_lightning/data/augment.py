"""Training augmentation of whole batches, chosen in the YAML by ``class_path`` (``data.augment``).

Batch contract: the loader yields uint8 (B, 3, 32, 32); an augmentation takes that batch on the
training device and returns float (B, 3, 32, 32) in [0, 1]; the model scales uint8 and accepts
floats in [0, 1], so evaluation batches (never augmented) stay uint8.

- ``BatchAugment``: Keras ImageDataGenerator (the original's): random flip, shift and rotation
  with 'nearest' fill.
- ``BatchRandomCrop``: random crop after reflect padding, and a flip (``configs/fast.yaml``).
- ``BatchGaussianNoise``: additive Gaussian noise, a strength drawn per image (robustness to noisy photos).
- ``BatchRandomContrast``: contrast lowered towards each image's mean, a factor drawn per image
  (robustness to dim, hazy, low-contrast photos).

The Keras augmentation has two implementations of one distribution:

- ``BatchAugment``: the whole batch at once with one affine grid (tensor in, tensor out), on
  whatever device the batch is on. No per-image Python work, so on a GPU it is never the limit.
- ``KerasRandomAffine`` + ``RandomHorizontalFlip``: torchvision's per-image ops, kept as the
  reference that a test compares the batched path against.

Keras semantics copied here: rotation angle uniform in [-r, r] degrees; shifts uniform
(continuous, not rounded to whole pixels) in [-f, f] of the width and height; bilinear
interpolation (Keras' ``interpolation_order=1``); uncovered pixels take the value of the
nearest edge pixel (``fill_mode='nearest'``); horizontal flip with probability 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from cifar_lightning.decode import to_unit_float
from cifar_lightning.errors import ConfigError


class BatchAugment(nn.Module):
    """Random flip, shift and rotation of a (B, C, H, W) batch as one ``grid_sample`` call.

    Args:
        rotation_degrees: Largest rotation either way, in degrees.
        shift_fraction: Largest shift either way, as a fraction of width and height.
        horizontal_flip: Flip half of the images left-right.
    """

    def __init__(self, rotation_degrees: float = 17.0, shift_fraction: float = 0.08, horizontal_flip: bool = True):
        super().__init__()
        if not 0 <= shift_fraction < 1 or rotation_degrees < 0:
            raise ConfigError(
                f"shift_fraction must be in [0, 1) and rotation_degrees at least 0, "
                f"got {shift_fraction} and {rotation_degrees}."
            )
        self.rotation_degrees = rotation_degrees
        self.shift_fraction = shift_fraction
        self.horizontal_flip = horizontal_flip

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = to_unit_float(images)  # (B, C, H, W) float in [0, 1]
        b, _, h, w = x.shape
        uniform = lambda: torch.rand(b, device=x.device, generator=generator) * 2 - 1  # noqa: E731
        angle = uniform() * math.radians(self.rotation_degrees)
        shift_x, shift_y = uniform() * self.shift_fraction * 2, uniform() * self.shift_fraction * 2
        flip = torch.ones(b, device=x.device)
        if self.horizontal_flip:
            flip = torch.where(torch.rand(b, device=x.device, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output pixel p (normalised coordinates) samples the input at R(angle) @ diag(flip, 1) @ p + shift;
        # the h/w factors keep the rotation a rotation in pixels when the image is not square.
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin * h / w, shift_x], dim=1),
                torch.stack([sin * flip * w / h, cos, shift_y], dim=1),
            ],
            dim=1,
        )  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # padding_mode="border" clamps to the edge pixel: Keras' fill_mode="nearest".
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def extra_repr(self) -> str:
        return (
            f"rotation_degrees={self.rotation_degrees}, shift_fraction={self.shift_fraction}, "
            f"horizontal_flip={self.horizontal_flip}"
        )


class BatchRandomCrop(nn.Module):
    """Random crop after reflect padding, and a horizontal flip: the usual CIFAR recipe, per batch.

    Shifts are whole pixels, uniform in [-padding, padding] both ways, so no pixel is interpolated;
    uncovered pixels mirror the image (``padding_mode='reflect'`` of torchvision's ``RandomCrop``).
    One gather for the whole batch, on whatever device the batch is on.
    """

    def __init__(self, padding: int = 4, horizontal_flip: bool = True):
        super().__init__()
        if not 0 <= padding < 16:
            raise ConfigError(f"The random crop's padding must be in [0, 16) pixels, got {padding}.")
        self.padding = padding
        self.horizontal_flip = horizontal_flip

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = to_unit_float(images)
        b, c, h, w = x.shape
        p, device = self.padding, x.device
        padded = F.pad(x, (p, p, p, p), mode="reflect") if p else x
        top = torch.randint(0, 2 * p + 1, (b, 1), device=device, generator=generator)
        left = torch.randint(0, 2 * p + 1, (b, 1), device=device, generator=generator)
        rows = top + torch.arange(h, device=device)  # (B, H)
        cols = left + torch.arange(w, device=device)  # (B, W)
        if self.horizontal_flip:
            flip = torch.rand(b, 1, device=device, generator=generator) < 0.5
            cols = torch.where(flip, cols.flip(1), cols)
        batch = torch.arange(b, device=device).view(b, 1, 1, 1)
        channel = torch.arange(c, device=device).view(1, c, 1, 1)
        return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]

    def extra_repr(self) -> str:
        return f"padding={self.padding}, horizontal_flip={self.horizontal_flip}"


def per_image_strength(x: Tensor, p: float, low: float, high: float, untouched: float,
                       generator: torch.Generator | None = None) -> Tensor:
    """One strength per image of the batch ``x``, shaped (B, 1, 1, 1) in its dtype: uniform in [low,
    high] for a share ``p`` of the images, ``untouched`` (the value that leaves an image as it is) for
    the rest. The photometric augmentations below draw their strengths with it."""
    b = x.shape[0]
    strength = low + torch.rand(b, device=x.device, generator=generator) * (high - low)
    strength = torch.where(torch.rand(b, device=x.device, generator=generator) < p, strength, untouched)
    return strength.view(b, 1, 1, 1).to(x.dtype)


class BatchGaussianNoise(nn.Module):
    """Additive Gaussian noise on a share of the images, each with its own strength, then clipped to [0, 1].

    Per image, not per batch: a whole batch noised alike would shift BatchNorm's batch statistics
    away from the running ones used at test time.

    Args:
        p: Share of the images that get noise.
        max_sigma: Largest standard deviation (on the [0, 1] scale); each noised image draws one
            uniformly from [0, max_sigma] (CIFAR-10-C's Gaussian noise runs 0.04-0.10).
    """

    def __init__(self, p: float = 0.5, max_sigma: float = 0.1):
        super().__init__()
        if not 0 <= p <= 1 or not 0 <= max_sigma <= 1:
            raise ConfigError(f"The noise's p and max_sigma must be in [0, 1], got {p} and {max_sigma}.")
        self.p = p
        self.max_sigma = max_sigma

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = to_unit_float(images)
        sigma = per_image_strength(x, self.p, 0.0, self.max_sigma, untouched=0.0, generator=generator)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return (x + noise * sigma).clamp_(0, 1)

    def extra_repr(self) -> str:
        return f"p={self.p}, max_sigma={self.max_sigma}"


class BatchRandomContrast(nn.Module):
    """Lower the contrast of a share of the images: ``mean + c * (x - mean)``, ``c`` drawn per image.

    The mean is each image's own over all pixels and channels, as in CIFAR-10-C's contrast
    corruption, so the image keeps its average brightness. Per image for the reason given in
    ``BatchGaussianNoise``.

    Args:
        p: Share of the images whose contrast is lowered.
        min_factor: Smallest contrast factor; each chosen image draws ``c`` uniformly from
            [min_factor, 1] (1 leaves it unchanged; CIFAR-10-C's contrast runs 0.75 down to 0.15).
    """

    def __init__(self, p: float = 0.33, min_factor: float = 0.2):
        super().__init__()
        if not 0 <= p <= 1 or not 0 <= min_factor <= 1:
            raise ConfigError(f"The contrast's p and min_factor must be in [0, 1], got {p} and {min_factor}.")
        self.p = p
        self.min_factor = min_factor

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = to_unit_float(images)
        factor = per_image_strength(x, self.p, self.min_factor, 1.0, untouched=1.0, generator=generator)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (mean + (x - mean) * factor).clamp_(0, 1)

    def extra_repr(self) -> str:
        return f"p={self.p}, min_factor={self.min_factor}"


class KerasRandomAffine(nn.Module):
    """Per-image Keras rotation and shift with torchvision's functional ops.

    torchvision's ``RandomAffine`` rounds shifts to whole pixels and fills with a constant;
    Keras does neither. Edge padding before the affine and a centre crop after it give the
    'nearest' fill; the padding is wide enough that no sample ever falls outside it.
    """

    def __init__(self, rotation_degrees: float = 17.0, shift_fraction: float = 0.08):
        super().__init__()
        self.rotation_degrees = rotation_degrees
        self.shift_fraction = shift_fraction

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        angle = (torch.rand(()).item() * 2 - 1) * self.rotation_degrees
        tx = (torch.rand(()).item() * 2 - 1) * self.shift_fraction * w
        ty = (torch.rand(()).item() * 2 - 1) * self.shift_fraction * h
        pad = math.ceil(max(h, w) * (1 + self.shift_fraction)) // 2 + 2
        padded = TF.pad(image, [pad, pad, pad, pad], padding_mode="edge")
        moved = TF.affine(
            padded, angle=angle, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
        )
        return TF.center_crop(moved, [h, w])


def per_image_transform(rotation_degrees: float, shift_fraction: float, horizontal_flip: bool) -> v2.Compose:
    """The torchvision reference pipeline: uint8 (C, H, W) in, uint8 (C, H, W) out."""
    steps: list[nn.Module] = [KerasRandomAffine(rotation_degrees, shift_fraction)]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps)


class SplitBatch(nn.Module):
    """Heavy augmentation on part of each batch, light on the rest, so every step also sees clean images.

    Rusak et al. (2020) noised half of each batch to keep clean accuracy while gaining robustness; this
    generalises that to any pair of batch augmentations. Batches are shuffled by the loader, so the
    first ``round(heavy_fraction * B)`` images are a random subset.

    Args:
        heavy: Augmentation of the first share of the batch (uint8 in, float or uint8 out).
        light: Augmentation of the rest (the same contract).
        heavy_fraction: Share of each batch that ``heavy`` gets, in [0, 1].
    """

    def __init__(self, heavy: nn.Module, light: nn.Module, heavy_fraction: float = 0.5):
        super().__init__()
        if not 0 <= heavy_fraction <= 1:
            raise ConfigError(f"SplitBatch's heavy_fraction must be in [0, 1], got {heavy_fraction}.")
        self.heavy = heavy
        self.light = light
        self.heavy_fraction = heavy_fraction

    def forward(self, images: Tensor) -> Tensor:
        k = round(self.heavy_fraction * images.shape[0])
        parts = [self.heavy(images[:k]) if k else None, self.light(images[k:]) if k < images.shape[0] else None]
        return torch.cat([to_unit_float(p) for p in parts if p is not None])

    def extra_repr(self) -> str:
        return f"heavy_fraction={self.heavy_fraction}"


class ViewPairs(nn.Module):
    """Every image twice: once through ``light``, once through ``heavy``, stacked as
    ``[light(x), heavy(x)]`` (2B images), so that the model can ask both views of one image for the
    same prediction: AugMix's Jensen-Shannon consistency loss (Hendrycks et al. 2020;
    ``CIFAR10Classifier(consistency_weight=...)``). The data module repeats the labels to match.

    Args:
        heavy: Augmentation of the second view (uint8 in, float or uint8 out).
        light: Augmentation of the first view (the same contract).
    """

    def __init__(self, heavy: nn.Module, light: nn.Module):
        super().__init__()
        self.heavy = heavy
        self.light = light

    def forward(self, images: Tensor) -> Tensor:
        return torch.cat([to_unit_float(self.light(images)), to_unit_float(self.heavy(images))])


class PerGroup(nn.Module):
    """Apply a transform to each of ``groups`` slices of the batch separately, so each slice draws its own
    random parameters. torchvision's v2 transforms draw one set for a whole batch (``AugMix`` one chain
    of operations for all of it); a few groups give the images of a step several chains for a few
    Python calls, where one call per image would cost more than the training step itself on a CPU.

    Args:
        transform: Any batch transform.
        groups: Number of slices (the last may be smaller).
    """

    def __init__(self, transform: nn.Module, groups: int = 4):
        super().__init__()
        if groups < 1:
            raise ConfigError(f"PerGroup's groups must be at least 1, got {groups}.")
        self.transform = transform
        self.groups = groups

    def forward(self, images: Tensor) -> Tensor:
        return torch.cat([self.transform(chunk) for chunk in images.chunk(self.groups)])

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
