"""CIFAR-10 as a LightningDataModule: in-memory uint8 tensors, the original's hold-out, and a
batch augmentation (``augment.py``) applied on the training device."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cifar_lightning.data.augment import BatchAugment
from cifar_lightning.data.folders import read_predict_folder
from cifar_lightning.data.sources import (
    CIFAR10_CLASSES,
    Split,
    download_if_missing,
    load_split,
)
from cifar_lightning.errors import ConfigError, DataSourceError
from cifar_lightning.robustness.corruptions import check_corruption, corrupt
from cifar_lightning.robustness.jpeg import check_jpeg_quality, reencode_jpeg


class InMemoryImages(Dataset):
    """Images and labels held as tensors; ``__getitems__`` hands out whole batches by fancy indexing.

    ``targets``, where set (one row per image, e.g. a teacher's log-probabilities for distillation),
    come as a third element of every item and batch.
    """

    def __init__(self, split: Split):
        self.images, self.labels = split.images, split.labels
        self.targets: Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return self._rows(index)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        # One gather per batch instead of one __getitem__ and a collate per image.
        return self._rows(torch.as_tensor(indices))

    def _rows(self, index: int | Tensor) -> tuple[Tensor, ...]:
        rows = (self.images[index], self.labels[index])
        return rows if self.targets is None else (*rows, self.targets[index])


class NamedImages(InMemoryImages):
    """Images with a name each (file path, or index in the test split), so predictions can be written per row.

    Batches are ``(images, labels, names)``; a label of -1 means the true class is unknown.
    """

    def __init__(self, split: Split, names: list[str]):
        super().__init__(split)
        self.names = names

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        return *super().__getitem__(index), self.names[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, list[str]]:
        return *super().__getitems__(indices), [self.names[i] for i in indices]


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate for ``InMemoryImages``: the batch arrives already stacked."""
    return batch


def holdout_split(num_images: int, val_size: int, seed: int, source_order: bool) -> tuple[Tensor, Tensor]:
    """(train_indices, val_indices): the original's hold-out where the source keeps its order.

    ``source_order``: the images are in torchvision's file order, so the first ``val_size`` are held
    out, as the original did (10,000: exactly ``data_batch_1``, itself a random draw). Image folders
    have lost that order, so a seeded random ``val_size`` is held out, kept in that random order so
    that any prefix of the validation split (``limit_val_batches``) is a fair sample of every class.
    """
    if source_order:
        return torch.arange(val_size, num_images), torch.arange(val_size)
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size]


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from torchvision's files or an image-folder copy, decoded once into memory.

    The loaders yield uint8 images (B, 3, 32, 32) and int64 labels; ``augment`` turns training
    batches into floats in [0, 1] on the device (``on_after_batch_transfer``). Scaling and
    normalisation belong to the model, so a checkpoint predicts the same whatever feeds it.

    Args:
        data_dir: Folder holding ``cifar-10-batches-py/`` (torchvision) or ``train/<class>/`` and
            ``test/<class>/`` image folders.
        download: Fetch torchvision's files into ``data_dir`` (about 170 MB, checked by MD5) when
            neither layout is found there; ``false`` only reads what is there.
        batch_size: Training batch size (the original: 64).
        eval_batch_size: Batch size for validation, test and predict; ``None`` picks 1024 on a GPU and
            128 on a CPU, where larger batches fall out of cache (measured on 2 cores: ~1,500
            images/s at 128 against ~950 at 256 and ~750 at 512).
        val_size: Training images held out for early stopping and checkpoints (the original: 10,000,
            the first ones of torchvision's files; from image folders a seeded random sample); 0
            trains on every training image and skips validation.
        seed: Seed of the random hold-out from image folders (independent of the training seed).
        augment: The training augmentation, applied to whole batches on the training device (uint8 in,
            float in [0, 1] out): ``BatchAugment`` (Keras ImageDataGenerator, the original's, the
            default), ``BatchRandomCrop`` (``configs/fast.yaml``) or ``null`` for none; in YAML a
            ``class_path`` with ``init_args``.
        num_workers: Loader worker processes; 0, the default, gathers each batch from memory in the
            main process, which needs no workers.
        pin_memory: Page-locked host memory for faster copies to a GPU.
        cache_dir: Where decoded tensors are cached (``None``: no cache).
        predict_dir: Folder of images (nested or flat, any format Pillow reads, any size) for
            ``predict``; ``None`` predicts the test split. Files that are not images are skipped and named.
        eval_jpeg_quality: Re-encode the validation and test images as JPEG at this Pillow quality
            (1-95) before evaluating them, to measure robustness to compressed inputs; ``None``, the
            default, evaluates the lossless images.
        eval_corruption: Evaluate the validation and test images with one of CIFAR-10-C's common
            corruptions (``corruptions.py``): gaussian_noise, shot_noise, impulse_noise, defocus_blur,
            zoom_blur, fog, brightness, contrast, pixelate or jpeg_compression; ``None``: as they are.
        eval_severity: The corruption's severity, 1 (mild) to 5 (severe).
        eval_seed: Seed of the random corruptions (noise, fog), so a score is repeatable.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_size: int = 10000,
        seed: int = 0,
        augment: nn.Module | None = lazy_instance(BatchAugment),
        num_workers: int = 0,
        pin_memory: bool = True,
        cache_dir: str | None = ".cache/cifar_lightning",
        predict_dir: str | None = None,
        eval_jpeg_quality: int | None = None,
        eval_corruption: str | None = None,
        eval_severity: int = 3,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}.")
        check_jpeg_quality(eval_jpeg_quality)
        check_corruption(eval_corruption, eval_severity)
        if eval_corruption is not None and eval_jpeg_quality is not None:
            raise ConfigError("Set eval_jpeg_quality or eval_corruption, not both: each replaces the evaluated images.")
        if val_size < 0:
            raise ConfigError(f"val_size must be at least 0 (images held out for validation; 0 trains on all), "
                              f"got {val_size}.")
        self.save_hyperparameters(ignore=["augment"])  # a module, not a value: the CLI's config.yaml records it
        self.classes = CIFAR10_CLASSES
        self.augment = augment
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.skipped_files: list[str] = []  # predict_dir files that were not readable images

    def prepare_data(self) -> None:
        """Only downloads, where neither layout is present: Lightning calls this on local rank 0 only
        (per node) and makes the other ranks wait."""
        predicting_a_folder = self.hparams.predict_dir is not None and self.trainer is not None and self.trainer.predicting
        if self.hparams.download and not predicting_a_folder:  # a predict folder needs no CIFAR-10
            download_if_missing(Path(self.hparams.data_dir).expanduser())

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage in ("fit", "validate") and self.train_set is None:
            full = load_split(hp.data_dir, train=True, cache_dir=hp.cache_dir)
            if hp.val_size >= len(full.labels):
                raise DataSourceError(
                    f"val_size={hp.val_size} leaves no training images: the training split has "
                    f"{len(full.labels)}. Choose a val_size below that (the original recipe holds out 10000)."
                )
            train_idx, val_idx = holdout_split(len(full.labels), hp.val_size, hp.seed, full.source_order)
            self.train_set = InMemoryImages(Split(full.images[train_idx], full.labels[train_idx]))
            self.val_set = InMemoryImages(Split(self._as_evaluated(full.images[val_idx]), full.labels[val_idx]))
        if stage == "test" or (stage == "predict" and hp.predict_dir is None):
            if self.test_set is None:
                test = load_split(hp.data_dir, train=False, cache_dir=hp.cache_dir)
                # Image folders list the test split class by class, so a prefix (limit_test_batches) would
                # hold a few classes only: a fixed random order makes any prefix a fair sample, and the
                # whole split scores the same. ``test_index`` keeps each image's index in the source.
                self.test_index = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))
                self.test_set = InMemoryImages(Split(self._as_evaluated(test.images[self.test_index]),
                                                     test.labels[self.test_index]))
        if stage == "predict" and self.predict_set is None:
            self.predict_set = self._predict_set()

    def _as_evaluated(self, images: Tensor) -> Tensor:
        """Evaluation images as they are, JPEG re-encoded where ``eval_jpeg_quality`` asks, or corrupted
        where ``eval_corruption`` asks."""
        hp = self.hparams
        if len(images) == 0:
            return images
        if hp.eval_jpeg_quality is not None:
            return reencode_jpeg(images, hp.eval_jpeg_quality)
        if hp.eval_corruption is not None:
            return corrupt(images, hp.eval_corruption, hp.eval_severity, hp.eval_seed)
        return images

    def _predict_set(self) -> NamedImages:
        """The test split named by index, or the decoded ``predict_dir`` named by file path."""
        if self.hparams.predict_dir is None:
            split = Split(self.test_set.images, self.test_set.labels)
            return NamedImages(split, [str(i) for i in self.test_index.tolist()])
        folder = read_predict_folder(self.hparams.predict_dir, self.classes)
        self.skipped_files = folder.skipped
        return NamedImages(Split(folder.images, folder.labels), folder.paths)

    def set_train_targets(self, targets: Tensor) -> None:
        """Give every training image a row of ``targets`` (a teacher's log-probabilities: ``training.distillation``),
        handed out with its image and label as the third element of each training batch."""
        if self.train_set is None:
            raise ConfigError("set_train_targets needs the training split: call setup('fit') first.")
        if len(targets) != len(self.train_set):
            raise ConfigError(f"{len(targets)} targets for {len(self.train_set)} training images: one row per image is needed.")
        self.train_set.targets = targets

    def on_after_batch_transfer(self, batch: tuple[Tensor, ...], dataloader_idx: int) -> tuple[Tensor, ...]:
        """Training batches are augmented here, after the copy, so on a GPU it runs on the GPU: uint8 in,
        float in [0, 1] out. Evaluation batches stay uint8 (the model scales them)."""
        training = self.trainer is not None and self.trainer.training and isinstance(batch, (tuple, list))
        if training and self.augment is not None:
            images, *per_image = batch  # labels, and the targets where set
            augmented = self.augment(images)
            if len(augmented) != len(images):  # several views of each image, stacked (ViewPairs): the rest follows
                views = len(augmented) // len(images)
                per_image = [t.repeat(views, *([1] * (t.dim() - 1))) for t in per_image]
            return augmented, *per_image
        return batch

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=keep_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
        )

    @property
    def eval_batch_size(self) -> int:
        if self.hparams.eval_batch_size is not None:
            return self.hparams.eval_batch_size
        on_gpu = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return 1024 if on_gpu else 128

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []  # val_size 0: Lightning skips validation
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, self.eval_batch_size, shuffle=False)
