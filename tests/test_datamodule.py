"""The DataModule on synthetic copies of both layouts: splits, dtypes, errors and the decode cache."""

import os
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from cifar_lightning import CIFAR10DataModule
from cifar_lightning import sources
from cifar_lightning.datamodule import stratified_split
from cifar_lightning.errors import DataSourceError


def make_datamodule(data_dir, tmp_path, **kwargs):
    kwargs = {"val_size": 50, "batch_size": 16, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return CIFAR10DataModule(data_dir=str(data_dir), **kwargs)


@pytest.mark.parametrize("layout", ["image_folder", "torchvision_folder"])
def test_both_layouts_load_into_uint8_splits(layout, request, tmp_path):
    dm = make_datamodule(request.getfixturevalue(layout), tmp_path)
    dm.setup("fit")
    assert len(dm.train_set) == 150 and len(dm.val_set) == 50
    assert dm.test_set is None  # the test split is touched only by `test`
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    assert torch.bincount(dm.val_set.labels, minlength=10).tolist() == [5] * 10
    dm.setup("test")
    assert len(dm.test_set) == 50


def test_both_layouts_hold_the_same_images(image_folder, torchvision_folder, tmp_path):
    """The fixtures write the same synthetic images; only their order differs."""
    a = sources.load_split(image_folder, train=True, cache_dir=None)
    b = sources.load_split(torchvision_folder, train=True, cache_dir=None)
    key = lambda split: sorted(zip(split.labels.tolist(), split.images.flatten(1).sum(1).tolist()))  # noqa: E731
    assert key(a) == key(b)


def test_stratified_split_is_balanced_disjoint_and_seeded():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    train, val = stratified_split(labels, 95, seed=3)
    assert len(val) == 95 and len(train) == 905
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(set(train.tolist()) | set(val.tolist())) == 1000
    counts = torch.bincount(labels[val], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(stratified_split(labels, 95, seed=3)[1], val)
    assert not torch.equal(stratified_split(labels, 95, seed=4)[1], val)


def test_missing_folder_names_both_layouts_and_download(tmp_path):
    dm = make_datamodule(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataSourceError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert "does not exist" in message and "cifar-10-batches-py" in message
    assert "train/<class>" in message and "--data.download true" in message


def test_folder_with_wrong_classes_is_named(image_folder, tmp_path):
    (image_folder / "train" / "cat").rename(image_folder / "train" / "kitten")
    with pytest.raises(DataSourceError, match=r"missing \['cat'\], unexpected \['kitten'\]"):
        make_datamodule(image_folder, tmp_path).setup("fit")


def test_unreadable_training_images_fail_fast_naming_every_file(image_folder, tmp_path):
    (image_folder / "train" / "dog" / "00000.png").write_bytes(b"not a png")
    (image_folder / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DataSourceError) as error:
        make_datamodule(image_folder, tmp_path).setup("fit")
    assert "2 of 202 files" in str(error.value)
    assert "00000.png" in str(error.value) and "notes.txt" in str(error.value)


def test_val_size_that_leaves_no_training_data_is_rejected(image_folder, tmp_path):
    with pytest.raises(DataSourceError, match="leaves no training images"):
        make_datamodule(image_folder, tmp_path, val_size=200).setup("fit")


def test_decoded_images_are_cached_and_a_changed_source_is_read_again(image_folder, tmp_path, monkeypatch):
    first = sources.load_split(image_folder, train=True, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decoding(files):
        raise AssertionError("decoded again although the source did not change")

    monkeypatch.setattr(sources, "read_image_folder", no_decoding)
    cached = sources.load_split(image_folder, train=True, cache_dir=tmp_path / "cache")
    assert torch.equal(cached.images, first.images) and torch.equal(cached.labels, first.labels)

    monkeypatch.undo()
    changed = image_folder / "train" / "cat" / "00060.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(changed)
    os.utime(changed, (0, 0))
    again = sources.load_split(image_folder, train=True, cache_dir=tmp_path / "cache")
    assert not torch.equal(again.images, first.images)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


@pytest.mark.parametrize("augmentation", ["batched", "per_image", "crop"])
def test_training_batches_are_augmented_and_evaluation_batches_are_not(augmentation, image_folder, tmp_path):
    torch.manual_seed(0)
    dm = make_datamodule(image_folder, tmp_path, augmentation=augmentation, num_workers=0)
    dm.setup("fit")
    raw = dm.train_set.images[:16]

    dm.trainer = SimpleNamespace(training=True)
    images, _ = dm.on_after_batch_transfer(dm.train_set.__getitems__(list(range(16))), 0)
    assert images.shape == (16, 3, 32, 32)
    as_float = images.float() / 255 if images.dtype == torch.uint8 else images
    assert as_float.min() >= 0 and as_float.max() <= 1
    assert not torch.allclose(as_float, raw.float() / 255, atol=1 / 255)  # changed

    dm.trainer = SimpleNamespace(training=False)
    val_batch = dm.val_set.__getitems__(list(range(8)))
    images, labels = dm.on_after_batch_transfer(val_batch, 0)
    assert torch.equal(images, dm.val_set.images[:8]) and images.dtype == torch.uint8  # identity in eval


def test_nonsense_datamodule_settings_are_rejected():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        CIFAR10DataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_size must be at least 1"):
        CIFAR10DataModule(val_size=-5)
    with pytest.raises(ValueError, match="crop_padding must be in"):
        CIFAR10DataModule(augmentation="crop", crop_padding=16)


def test_eval_batch_size_is_explicit_or_picked_for_the_device(image_folder, tmp_path):
    assert make_datamodule(image_folder, tmp_path, eval_batch_size=40).eval_batch_size == 40
    dm = make_datamodule(image_folder, tmp_path)
    assert dm.eval_batch_size == 128  # no trainer: CPU
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert dm.eval_batch_size == 1024
    dm.trainer = None
    dm.setup("fit")
    assert next(iter(dm.val_dataloader()))[0].shape[0] == 50  # the whole 50-image validation split
