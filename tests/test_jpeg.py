"""``eval_jpeg_quality``: the validation and test images re-encoded the way a user's JPEG thumbnails
arrive (the robustness check of docs/results.md), and nothing else touched."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cifar_lightning import CIFAR10DataModule
from cifar_lightning.decode import read_image
from cifar_lightning.errors import ConfigError
from cifar_lightning.robustness.jpeg import reencode_jpeg

from cli_runner import run_failing


def test_reencoding_equals_a_jpeg_file_saved_by_pillow_and_read_by_predict(image_folder, tmp_path):
    data = CIFAR10DataModule(str(image_folder), val_size=50, cache_dir=None, eval_jpeg_quality=75)
    data.setup("test")
    lossless = CIFAR10DataModule(str(image_folder), val_size=50, cache_dir=None)
    lossless.setup("test")
    for image, original in zip(data.test_set.images[:5], lossless.test_set.images[:5]):
        path = tmp_path / "thumb.jpg"
        Image.fromarray(original.permute(1, 2, 0).numpy()).save(path, quality=75)  # a user's thumbnail
        assert torch.equal(image, read_image(path))
        assert not torch.equal(image, original)


def test_only_the_evaluated_images_are_reencoded(image_folder):
    lossless = CIFAR10DataModule(str(image_folder), val_size=50, cache_dir=None)
    jpeg = CIFAR10DataModule(str(image_folder), val_size=50, cache_dir=None, eval_jpeg_quality=75)
    for data in (lossless, jpeg):
        data.setup("fit")
        data.setup("test")
    assert torch.equal(jpeg.train_set.images, lossless.train_set.images)
    assert torch.equal(jpeg.val_set.labels, lossless.val_set.labels)
    assert torch.equal(jpeg.test_set.labels, lossless.test_set.labels)
    for split in ("val_set", "test_set"):
        changed = (getattr(jpeg, split).images != getattr(lossless, split).images).flatten(1).any(1)
        assert changed.all()


def test_a_lower_quality_loses_more_of_the_image():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8).sort(dim=-1).values  # some structure
    error = {q: (reencode_jpeg(images, q).float() - images.float()).abs().mean() for q in (10, 75, 95)}
    assert error[95] < error[75] < error[10]


@pytest.mark.parametrize("quality", [0, 100])
def test_a_quality_outside_pillows_scale_is_refused(quality):
    with pytest.raises(ConfigError, match="jpeg_quality must be between 1 and 95"):
        CIFAR10DataModule(eval_jpeg_quality=quality)


def test_the_cli_names_a_bad_quality_in_one_line(image_folder, capsys):
    message = run_failing(["test", "--data.data_dir", str(image_folder), "--data.eval_jpeg_quality", "0"], capsys)
    assert "jpeg_quality must be between 1 and 95" in message
