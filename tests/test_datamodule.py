"""The DataModule on synthetic copies of both layouts: splits, dtypes, errors and the decode cache."""

import hashlib
import io
import logging
import os
import sys
import tarfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from torchvision.datasets import CIFAR10

from cifar_lightning import CIFAR10DataModule
from cifar_lightning.data import sources
from cifar_lightning.data.augment import BatchAugment, BatchRandomCrop

from conftest import write_torchvision_folder


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
    assert torch.bincount(dm.val_set.labels, minlength=10).min() >= 1  # a random 50 of 200 (image folders)
    dm.setup("test")
    assert len(dm.test_set) == 50


def test_both_layouts_hold_the_same_images(image_folder, torchvision_folder, tmp_path):
    """The fixtures write the same synthetic images; only their order differs."""
    a = sources.load_split(image_folder, train=True, cache_dir=None)
    b = sources.load_split(torchvision_folder, train=True, cache_dir=None)
    key = lambda split: sorted(zip(split.labels.tolist(), split.images.flatten(1).sum(1).tolist()))  # noqa: E731
    assert key(a) == key(b)


def test_decoded_images_are_cached_and_a_changed_source_is_read_again(image_folder, tmp_path, monkeypatch):
    first = sources.load_split(image_folder, train=True, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decoding(files, description=""):
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


@pytest.mark.parametrize("augment", [BatchAugment(), BatchRandomCrop()])
def test_training_batches_are_augmented_and_evaluation_batches_are_not(augment, image_folder, tmp_path):
    torch.manual_seed(0)
    dm = make_datamodule(image_folder, tmp_path, augment=augment)
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


def test_eval_batch_size_is_explicit_or_picked_for_the_device(image_folder, tmp_path):
    assert make_datamodule(image_folder, tmp_path, eval_batch_size=40).eval_batch_size == 40
    dm = make_datamodule(image_folder, tmp_path)
    assert dm.eval_batch_size == 128  # no trainer: CPU
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert dm.eval_batch_size == 1024
    dm.trainer = None
    dm.setup("fit")
    assert next(iter(dm.val_dataloader()))[0].shape[0] == 50  # the whole 50-image validation split


def serve_archive(monkeypatch, archive: bytes) -> list[str]:
    """Fake the network: every URL answers with ``archive`` (what cs.toronto.edu would send). Returns the URLs asked for."""
    asked = []

    class Response(io.BytesIO):
        def __init__(self, url):
            super().__init__(archive)
            self.url, self.length = url, len(archive)

    def urlopen(request, *args, **kwargs):
        url = getattr(request, "full_url", request)
        asked.append(url)
        return Response(url)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_missing_data_is_downloaded_by_default(tmp_path, monkeypatch):
    source = write_torchvision_folder(tmp_path / "source", n_train=4, n_test=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(source / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(buffer.getvalue()).hexdigest())
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    asked = serve_archive(monkeypatch, buffer.getvalue())
    dm = make_datamodule(tmp_path / "data", tmp_path, val_size=10)  # no download flag: the default
    dm.prepare_data()
    dm.setup("fit")
    assert asked and all(url == CIFAR10.url for url in asked)
    assert len(dm.train_set) + len(dm.val_set) == 40


def test_data_present_is_never_downloaded(image_folder, tmp_path, monkeypatch):
    asked = serve_archive(monkeypatch, b"")
    make_datamodule(image_folder, tmp_path).prepare_data()
    assert asked == []


def test_test_split_is_in_a_fixed_random_order_that_any_prefix_samples_fairly(image_folder, tmp_path):
    source = sources.load_split(image_folder, train=False, cache_dir=None)  # class by class
    dm = make_datamodule(image_folder, tmp_path, eval_batch_size=10)
    dm.setup("test")
    assert torch.equal(dm.test_set.images, source.images[dm.test_index])
    assert sorted(dm.test_index.tolist()) == list(range(len(source.labels)))
    first_batch = next(iter(dm.test_dataloader()))[1]
    assert len(set(first_batch.tolist())) >= 5  # in source order the first 10 are 5 airplanes and 5 cars
    again = make_datamodule(image_folder, tmp_path)
    again.setup("test")
    assert torch.equal(again.test_index, dm.test_index)


def test_predict_on_the_test_split_names_each_image_by_its_source_index(image_folder, tmp_path):
    source = sources.load_split(image_folder, train=False, cache_dir=None)
    dm = make_datamodule(image_folder, tmp_path)
    dm.setup("predict")
    images, labels, names = dm.predict_set.__getitems__(list(range(len(dm.predict_set))))
    for image, label, name in zip(images, labels, names):
        assert torch.equal(image, source.images[int(name)]) and label == source.labels[int(name)]


def test_decoding_is_quiet_off_a_terminal_and_the_cache_says_it_was_used(image_folder, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    sources.load_split(image_folder, train=False, cache_dir=tmp_path / "cache")
    assert "Decoding the test images of" not in capfd.readouterr().err  # a pipe or a log file gets no bar
    sources.load_split(image_folder, train=False, cache_dir=tmp_path / "cache")
    assert any("images from the decode cache" in message for message in caplog.messages)


def test_progress_bars_show_on_a_terminal_only(monkeypatch):
    import io

    from cifar_lightning.progress import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert list(progress(range(3), "Decoding the test images")) == [0, 1, 2]
        assert ("Decoding the test images" in stream.getvalue()) is shown


def test_labels_follow_an_augmentation_that_gives_every_image_two_views(image_folder, tmp_path):
    from cifar_lightning.data.augment import ViewPairs

    dm = make_datamodule(image_folder, tmp_path, augment=ViewPairs(heavy=BatchRandomCrop(), light=torch.nn.Identity()))
    dm.setup("fit")
    dm.trainer = SimpleNamespace(training=True)
    batch = dm.train_set.__getitems__(list(range(6)))
    images, labels = dm.on_after_batch_transfer(batch, 0)
    assert images.shape == (12, 3, 32, 32)
    assert torch.equal(labels, torch.cat([batch[1], batch[1]]))
    assert torch.equal(images[:6], batch[0].float() / 255)
