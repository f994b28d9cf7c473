"""The batched augmentation draws from the same distribution as the per-image torchvision reference."""

import math

import pytest
import torch

from cifar_lightning.data.augment import BatchAugment, per_image_transform

N = 1500


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical CDFs."""
    a, b = a.sort().values, b.sort().values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True) / len(a)
    cdf_b = torch.searchsorted(b, points, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()


# Critical distance at significance 0.001 for two samples of N: c(alpha) * sqrt(2 / N).
KS_CRITICAL = math.sqrt(-math.log(0.001 / 2) / 2) * math.sqrt(2 / N)


def dot_image() -> torch.Tensor:
    """Black image with one bright 3x3 square away from the centre: its centroid reveals the transform."""
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 5:8, 21:24] = 255
    return image


def centroids(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights = images.float().mean(1)  # (N, 32, 32)
    total = weights.sum((1, 2))
    grid = torch.arange(32, dtype=torch.float32)
    return (weights.sum(1) * grid).sum(1) / total, (weights.sum(2) * grid).sum(1) / total


def run_batched(image, n=N, **settings) -> torch.Tensor:
    torch.manual_seed(1)
    return BatchAugment(**settings)(image.expand(n, -1, -1, -1))


def run_per_image(image, n=N, **settings) -> torch.Tensor:
    torch.manual_seed(2)
    transform = per_image_transform(**{"rotation_degrees": 17.0, "shift_fraction": 0.08, "horizontal_flip": True,
                                       **settings})
    return torch.stack([transform(image) for _ in range(n)]).float() / 255


def test_centroid_distribution_matches_the_per_image_reference():
    xb, yb = centroids(run_batched(dot_image()))
    xr, yr = centroids(run_per_image(dot_image()))
    assert ks_statistic(xb, xr) < KS_CRITICAL
    assert ks_statistic(yb, yr) < KS_CRITICAL
    # Half of the images are flipped: the square (left of centre at x=22) lands right of centre.
    assert abs((xb > 15.5).float().mean().item() - 0.5) < 0.05
    assert abs((xr > 15.5).float().mean().item() - 0.5) < 0.05


def test_the_comparison_detects_a_different_rotation_range():
    """The test above has power: halving the rotation range is caught."""
    xb, yb = centroids(run_batched(dot_image(), rotation_degrees=6.0))
    xr, yr = centroids(run_per_image(dot_image()))
    assert max(ks_statistic(xb, xr), ks_statistic(yb, yr)) > KS_CRITICAL


def test_shift_and_rotation_stay_within_keras_ranges():
    """Without flip, the square's centroid moves at most by the largest shift plus the largest rotation."""
    for images in (run_batched(dot_image(), horizontal_flip=False), run_per_image(dot_image(), horizontal_flip=False)):
        x, y = centroids(images)
        cx, cy = x - 15.5, y - 15.5  # the square starts at (6.5, -9.5) from the centre
        radius = math.hypot(6.5, -9.5)
        shift = 0.1 * 32
        assert ((cx**2 + cy**2).sqrt() - radius).abs().max() <= shift * math.sqrt(2) + 0.5
        angle_moved = torch.atan2(cy, cx) - math.atan2(-9.5, 6.5)
        assert angle_moved.abs().max() <= math.radians(17) + math.asin(shift * math.sqrt(2) / radius) + 0.05


@pytest.mark.parametrize("path", ["batched", "per_image"])
def test_nearest_fill_keeps_a_constant_image_constant(path):
    """Keras' fill_mode='nearest': uncovered pixels copy the edge, so nothing darkens at the corners."""
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    out = run_batched(image, n=200) if path == "batched" else run_per_image(image, n=200)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255), atol=1e-5, rtol=0)


def test_mean_image_matches_the_per_image_reference():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    batched, reference = run_batched(image), run_per_image(image)
    assert (batched.mean(0) - reference.mean(0)).abs().max() < 0.06
    assert (batched.std(0) - reference.std(0)).abs().mean() < 0.01


def test_batched_keeps_shape_and_device_and_returns_unit_floats():
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    out = BatchAugment()(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(BatchAugment()(images), BatchAugment()(images))  # random each call


def test_uint8_scaling_is_kerass_division_by_255():
    """Keras feeds ``astype('float32') / 255``; so does ``to_unit_float``. torchvision's
    ``to_dtype(..., scale=True)`` multiplies by the reciprocal instead and lands one float step away
    for some values, which is why the package keeps its own one-line helper."""
    from torchvision.transforms.v2 import functional as TF

    from cifar_lightning.decode import to_unit_float

    every_value = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    keras = torch.from_numpy(every_value.numpy().astype("float32") / 255)
    assert torch.equal(to_unit_float(every_value), keras)
    assert not torch.equal(TF.to_dtype(every_value, torch.float32, scale=True), keras)


def mid_grey_images(n: int) -> torch.Tensor:
    """Images well inside [0, 1], so that no clipping hides what a photometric augmentation did."""
    torch.manual_seed(3)
    return (torch.rand(n, 3, 32, 32) * 0.4 + 0.3)


def test_gaussian_noise_reaches_the_set_share_of_images_with_sigmas_up_to_the_maximum():
    from cifar_lightning.data.augment import BatchGaussianNoise

    images = mid_grey_images(4000)
    torch.manual_seed(4)
    sigma = (BatchGaussianNoise(p=0.25, max_sigma=0.08)(images) - images).std(dim=(1, 2, 3))
    noised = sigma > 1e-6
    assert abs(noised.float().mean().item() - 0.25) < 0.03
    # Each noised image's sigma is uniform on [0, 0.08]: mean 0.04, nothing above the maximum.
    assert sigma.max().item() < 0.08 * 1.1
    assert abs(sigma[noised].mean().item() - 0.04) < 0.004


def test_contrast_keeps_each_images_mean_and_scales_its_spread_by_a_factor_in_range():
    from cifar_lightning.data.augment import BatchRandomContrast

    images = mid_grey_images(4000)
    torch.manual_seed(5)
    out = BatchRandomContrast(p=0.5, min_factor=0.2)(images)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5)
    factor = out.std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3))
    changed = factor < 1 - 1e-4
    assert abs(changed.float().mean().item() - 0.5) < 0.03
    assert factor.min().item() > 0.2 - 1e-4
    assert abs(factor[changed].mean().item() - 0.6) < 0.02  # uniform on [0.2, 1]
    assert out.dtype == torch.float32 and out.shape == images.shape


@pytest.mark.parametrize("settings", [{"p": 1.5}, {"min_factor": -0.1}])
def test_contrast_refuses_settings_outside_zero_to_one(settings):
    from cifar_lightning.data.augment import BatchRandomContrast
    from cifar_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        BatchRandomContrast(**settings)


class Fill(torch.nn.Module):
    """A batch augmentation that marks its images: every pixel becomes ``value`` (a float)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full(images.shape, self.value)


def test_split_batch_gives_the_first_share_of_the_batch_heavy_and_the_rest_light():
    from cifar_lightning.data.augment import SplitBatch

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = SplitBatch(heavy=Fill(0.25), light=Fill(0.75), heavy_fraction=0.25)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.all(out[:2] == 0.25) and torch.all(out[2:] == 0.75)
    assert torch.all(SplitBatch(heavy=Fill(0.25), light=Fill(0.75), heavy_fraction=0.0)(images) == 0.75)
    assert torch.all(SplitBatch(heavy=Fill(0.25), light=Fill(0.75), heavy_fraction=1.0)(images) == 0.25)


def test_split_batch_refuses_a_fraction_outside_zero_to_one():
    from cifar_lightning.data.augment import SplitBatch
    from cifar_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="heavy_fraction must be in \\[0, 1\\]"):
        SplitBatch(heavy=Fill(0.0), light=Fill(1.0), heavy_fraction=1.5)


class OneDrawPerCall(torch.nn.Module):
    """Like torchvision's v2 transforms on a batch: one random draw for every image it is given."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full(images.shape, torch.rand(()).item())


def test_per_group_gives_each_slice_of_the_batch_its_own_draw():
    from cifar_lightning.data.augment import PerGroup

    torch.manual_seed(0)
    out = PerGroup(OneDrawPerCall(), groups=4)(torch.zeros(8, 3, 32, 32))
    per_image = out.flatten(1)
    assert torch.all(per_image == per_image[:, :1])  # one value an image
    values = per_image[:, 0]
    assert torch.equal(values[0::2], values[1::2])  # the two images of a slice share their draw
    assert len(set(values.tolist())) == 4  # four slices, four draws


def test_view_pairs_stacks_a_light_and_a_heavy_view_of_the_same_images():
    from cifar_lightning.data.augment import ViewPairs

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = ViewPairs(heavy=Fill(0.25), light=torch.nn.Identity())(images)
    assert out.shape == (10, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out[:5], images.float() / 255)  # the light view first, scaled as Keras does
    assert torch.all(out[5:] == 0.25)
