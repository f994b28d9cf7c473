"""Synthetic CIFAR-10 look-alikes written to temporary folders, so no test needs the network.

Each class gets its own colour plus noise, so a small model learns to tell them apart in a
few epochs: tests that need a *trained* checkpoint can check real predictions.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch.optim.swa_utils import update_bn
from torchvision.datasets import CIFAR10

from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.report.tensorboard_figures import TensorBoardFigures

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module: the scripts are not a package, so tests load them by path."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The real CIFAR-10 image folders: $CIFAR10_DIR (as benchmarks/gpu_check.sh reads it), else where CI puts them.
REAL_DATA = Path(os.environ.get("CIFAR10_DIR") or REPO.parent / "shared" / "cifar10")

# Ten well separated colours, one per class.
CLASS_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 0, 128]],
    dtype=np.float32,
)


def synthetic_images(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) labels, class by class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    noise = rng.normal(0, 25, size=(len(labels), 32, 32, 3))
    images = np.clip(CLASS_COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_image_folder(root: Path, n_train: int = 20, n_test: int = 5, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``, like the real image folders."""
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_images(n, seed + offset)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def write_torchvision_folder(root: Path, n_train: int = 20, n_test: int = 5, seed: int = 0) -> Path:
    """torchvision's ``cifar-10-batches-py`` pickles with synthetic content (5 train batches + test)."""
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    images, labels = synthetic_images(n_train, seed)
    order = np.random.default_rng(seed).permutation(len(labels))  # the real pickles are not sorted by class
    chunks = np.array_split(order, 5)
    for i, chunk in enumerate(chunks, start=1):
        batch = {"data": images[chunk].transpose(0, 3, 1, 2).reshape(len(chunk), -1), "labels": labels[chunk].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test_images, test_labels = synthetic_images(n_test, seed + 1)
    test = {"data": test_images.transpose(0, 3, 1, 2).reshape(len(test_labels), -1), "labels": test_labels.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "cifar10")


@pytest.fixture
def torchvision_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The fake pickles cannot match torchvision's MD5 list; torchvision's own tests skip the check the same way.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    return write_torchvision_folder(tmp_path / "tv")


@pytest.fixture(scope="session")
def decode_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the session's real-data tests, outside the checkout (decoding the 60,000
    real images takes ~20 s once; each test after the first loads them in about a second)."""
    return tmp_path_factory.mktemp("decode_cache")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real CIFAR-10 image folders not found at {REAL_DATA} (set CIFAR10_DIR; docs/development.md)")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _small_threads() -> None:
    torch.set_num_threads(2)


class NetworkDisabled(urllib.error.URLError):
    pass


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the network: every URL opened in this process fails as it does offline.
    (Subprocesses pass --data.download false instead.)"""
    def refuse(request, *args, **kwargs):
        raise NetworkDisabled("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "cifar10", n_train=10, n_test=2)  # 100 training images


EPOCHS = 15


class RecordMetrics(Callback):
    """What the trainer logged each epoch, to compare with what the report reads back from the event file."""

    def __init__(self):
        self.val_acc: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_acc.append(float(trainer.callback_metrics["val/acc"]))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A model trained for a few epochs on synthetic colour classes, its checkpoint and TensorBoard log.

    After training, BatchNorm's running statistics are recomputed over the training images
    (``update_bn``): with Keras' momentum 0.99 they need hundreds of steps to settle, and a
    test cannot afford them. Measured with seed 0: 15 epochs of batch 8 then ``update_bn`` give 100% on
    the test split (5 of 6 seeds; fewer steps left whole classes confused).
    """
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("trained")
    data_dir = write_image_folder(root / "data", n_train=20, n_test=5)
    data = CIFAR10DataModule(str(data_dir), batch_size=8, eval_batch_size=100, val_size=20,
                             augment=None, cache_dir=None)
    recorder = RecordMetrics()
    logger = TensorBoardLogger(root / "logs", name="tiny")
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[recorder, TensorBoardFigures(num_images=16)])
    L.seed_everything(0)
    model = CIFAR10Classifier()
    trainer.fit(model, datamodule=data)
    update_bn(data.train_dataloader(), model)
    ckpt = root / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    test_acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    return SimpleNamespace(data_dir=data_dir, ckpt=str(ckpt), log_dir=Path(logger.log_dir),
                           val_acc=recorder.val_acc, test_acc=test_acc)
