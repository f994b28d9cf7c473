"""Read CIFAR-10 once into uint8 tensors, from either layout (downloading torchvision's files where
neither is present), and cache the result on disk.

Decoding 60,000 PNGs takes far longer than a training step, so both sources end up as one
``(N, 3, 32, 32)`` uint8 tensor per split (about 180 MB for all of CIFAR-10) that later runs
load from the cache in about a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor
from torchvision.datasets import CIFAR10

from cifar_lightning.atomic import save_atomically
from cifar_lightning.decode import DECODE_ERRORS, IMAGE_SIZE, to_rgb
from cifar_lightning.errors import DataSourceError
from cifar_lightning.progress import progress

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
TORCHVISION_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"


@dataclass(frozen=True)
class Split:
    """One split of the data set held in memory."""

    images: Tensor  # (N, 3, 32, 32) uint8
    labels: Tensor  # (N,) int64
    source_order: bool = False  # in torchvision's file order (the original's); image folders lose it


# How the training commands name the data folder and the download; other commands (report, the
# benchmarks) pass their own option names, so that an error names an option the user can give.
DATA_OPTION = "--data.data_dir"
DOWNLOAD_HINT = "--data.download true, the default, fetches them where neither layout is found"


def describe_layouts(data_dir: Path, data_option: str = DATA_OPTION, download_hint: str = DOWNLOAD_HINT) -> str:
    return (
        f"Expected CIFAR-10 in {data_dir} in one of two layouts:\n"
        f"  1. torchvision's files: {data_dir / TORCHVISION_FOLDER}/ ({download_hint})\n"
        f"  2. image folders: {data_dir}/train/<class>/*.png and {data_dir}/test/<class>/*.png "
        f"with the classes {', '.join(CIFAR10_CLASSES)}.\n"
        f"Point {data_option} at the folder that holds them."
    )


def download_if_missing(data_dir: Path) -> None:
    """torchvision's download into ``data_dir`` where neither layout is there.

    A failed download (offline, say) is one clear ``DataSourceError``, and whatever the attempt
    created (the folder itself and any parents it needed, a partial archive) is removed, so the next
    run sees what it saw before.
    """
    if (data_dir / TORCHVISION_FOLDER).exists() or (data_dir / "train").exists() or (data_dir / "test").exists():
        return  # present, or half present: reading it names what is missing rather than downloading beside it
    missing = [path for path in (data_dir, *data_dir.parents) if not path.exists()]  # innermost first
    existed = set(data_dir.iterdir()) if data_dir.is_dir() else None
    try:
        for train in (True, False):
            CIFAR10(str(data_dir), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad MD5 is a RuntimeError
        if missing:  # torchvision creates the parents too: remove from the outermost one it created
            shutil.rmtree(missing[-1], ignore_errors=True)
        elif data_dir.is_dir():
            for path in set(data_dir.iterdir()) - existed:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        reason = getattr(error, "reason", None) or error
        raise DataSourceError(
            f"Could not download CIFAR-10 into {data_dir} ({type(error).__name__}: {reason}). Without internet "
            f"access, put the data there yourself (torchvision's {TORCHVISION_FOLDER}/ or train/<class>/ and "
            "test/<class>/ image folders), or point --data.data_dir at a folder that holds it."
        ) from None


def find_layout(data_dir: Path, data_option: str = DATA_OPTION, download_hint: str = DOWNLOAD_HINT) -> str:
    """'torchvision' or 'folder', whichever is present; a clear error if neither is."""
    if (data_dir / TORCHVISION_FOLDER).is_dir():
        return "torchvision"
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return "folder"
    if not data_dir.exists():
        raise DataSourceError(f"The data folder {data_dir} does not exist.\n"
                              + describe_layouts(data_dir, data_option, download_hint))
    raise DataSourceError(f"No CIFAR-10 data found in {data_dir}.\n" + describe_layouts(data_dir, data_option, download_hint))


def load_split(data_dir: str | os.PathLike, train: bool, cache_dir: str | os.PathLike | None,
               data_option: str = DATA_OPTION, download_hint: str = DOWNLOAD_HINT) -> Split:
    """The train or test split as uint8 tensors, from the cache when the source is unchanged.
    ``data_option``, ``download_hint``: how the calling command names its data folder and download."""
    data_dir = Path(data_dir).expanduser().resolve()
    layout = find_layout(data_dir, data_option, download_hint)
    split = "train" if train else "test"
    files = list_torchvision_files(data_dir) if layout == "torchvision" else list_image_files(data_dir / split)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"cifar10-{split}-{source_key(data_dir, layout, files)}.pt"
        if cache_file.is_file():
            cached = torch.load(cache_file, weights_only=True)
            rank_zero_info(f"CIFAR-10 {split} split: {len(cached['labels'])} images from the decode cache {cache_file}")
            return Split(cached["images"], cached["labels"], source_order=layout == "torchvision")
    if layout == "torchvision":
        split_data = read_torchvision(data_dir, train)
    else:
        split_data = read_image_folder(files, description=f"Decoding the {split} images of {data_dir}")
    if cache_file is not None:
        save_atomically({"images": split_data.images, "labels": split_data.labels}, cache_file)
    return split_data


def source_key(data_dir: Path, layout: str, files: list[tuple[Path, int]]) -> str:
    """A digest of the source's path, file names, sizes and modification times."""
    digest = hashlib.sha256(f"{data_dir}|{layout}".encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def list_torchvision_files(data_dir: Path) -> list[tuple[Path, int]]:
    folder = data_dir / TORCHVISION_FOLDER
    return [(path, 0) for path in sorted(folder.iterdir()) if path.is_file()]


def read_torchvision(data_dir: Path, train: bool) -> Split:
    """torchvision's pickled batches, checked by MD5 as torchvision does."""
    try:
        dataset = CIFAR10(str(data_dir), train=train, download=False)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise DataSourceError(
            f"torchvision's CIFAR-10 files in {data_dir / TORCHVISION_FOLDER} are incomplete or corrupt "
            f"({error}). Delete that folder and run again with --data.download true."
        ) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.tensor(dataset.targets, dtype=torch.int64), source_order=True)


def list_image_files(split_dir: Path) -> list[tuple[Path, int]]:
    """(path, label) for every image in ``split_dir/<class>/``, checking the class folders."""
    if not split_dir.is_dir():
        raise DataSourceError(f"The folder {split_dir} does not exist.\n" + describe_layouts(split_dir.parent))
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    missing = [c for c in CIFAR10_CLASSES if c not in found]
    extra = [c for c in found if c not in CIFAR10_CLASSES]
    if missing or extra:
        raise DataSourceError(
            f"The class folders in {split_dir} are not the ten CIFAR-10 classes: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}. "
            f"Expected exactly: {', '.join(CIFAR10_CLASSES)}."
        )
    files = []
    for label, name in enumerate(CIFAR10_CLASSES):
        class_files = sorted(p for p in (split_dir / name).rglob("*") if p.is_file())
        if not class_files:
            raise DataSourceError(f"The class folder {split_dir / name} holds no files.")
        files.extend((path, label) for path in class_files)
    return files


def read_image_folder(files: list[tuple[Path, int]], description: str = "Decoding images") -> Split:
    """Decode every file, with a progress bar on a terminal (``progress``); fail once, naming every file
    that is not a 32x32 image."""
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    bad = []
    for i, (path, _) in enumerate(progress(files, description)):
        try:
            with Image.open(path) as image:
                array = np.asarray(to_rgb(image))
        except DECODE_ERRORS as error:
            bad.append(f"{path} ({type(error).__name__}: {error})")
            continue
        if array.shape != images.shape[1:]:
            bad.append(f"{path} (size {array.shape[1]}x{array.shape[0]}, expected 32x32)")
            continue
        images[i] = array
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataSourceError(
            f"{len(bad)} of {len(files)} files are not readable 32x32 images:\n  {shown}\n"
            "Remove or replace them; training data is never silently skipped."
        )
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)
