"""Images people bring to predict: any folder, any format Pillow reads, any size or colour mode.

Unlike training data (which must be exact and fails on any bad file), a predict folder is
whatever is at hand, so unreadable files are skipped and named, and the rest are predicted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from cifar_lightning.errors import DataSourceError
from cifar_lightning.sources import DECODE_ERRORS, IMAGE_SIZE



@dataclass(frozen=True)
class ImageFolder:
    """Decoded images of a predict folder, with what was skipped and why."""

    images: Tensor  # (N, 3, 32, 32) uint8
    paths: list[str]  # the N files, in the order of ``images``
    labels: Tensor  # (N,) int64: class index from the parent folder's name, -1 where it names no class
    skipped: list[str] = field(default_factory=list)  # "path (reason)" for files that are not images


def to_rgb32(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Any Pillow image -> RGB ``size`` x ``size``: EXIF rotation applied, transparency on white, squashed."""
    image = ImageOps.exif_transpose(image)
    if "A" in image.getbands() or "transparency" in image.info:
        # Convert alone would turn transparent pixels into whatever colour they hide (often black).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        # Pillow widens the filter when shrinking (antialiased), so large photos do not alias.
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def image_to_tensor(image: Image.Image) -> Tensor:
    """RGB 32x32 Pillow image -> uint8 (3, 32, 32)."""
    return torch.from_numpy(np.asarray(to_rgb32(image)).copy()).permute(2, 0, 1)


def read_image(path: str | os.PathLike) -> Tensor:
    """One image file -> uint8 (3, 32, 32); Pillow's error if it is not a readable image."""
    with Image.open(path) as image:
        image.load()
        return image_to_tensor(image)


def read_predict_folder(folder: str | os.PathLike, class_names: list[str] | tuple[str, ...]) -> ImageFolder:
    """Every file under ``folder`` (nested or flat), sorted; bad files are skipped and reported.

    Labels come from the parent folder's name when it is one of ``class_names`` (so
    ``test/cat/0001.png`` is known to be a cat), which lets the CSV and the CLI report accuracy.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataSourceError(f"The predict folder {root} does not exist or is not a folder. "
                              "Pass --data.predict_dir a folder of images.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataSourceError(f"The predict folder {root} holds no files. Put images in it (PNG, JPEG, ...).")
    index = {name: i for i, name in enumerate(class_names)}
    images, paths, labels, skipped = [], [], [], []
    for path in files:
        try:
            images.append(read_image(path))
        except DECODE_ERRORS as error:
            skipped.append(f"{path} ({type(error).__name__}: {error})")
            continue
        paths.append(str(path))
        labels.append(index.get(path.parent.name, -1) if path.parent != root else -1)
    if not images:
        raise DataSourceError(
            f"None of the {len(files)} files in {root} is an image Pillow can read, e.g. {skipped[0]}."
        )
    return ImageFolder(torch.stack(images), paths, torch.tensor(labels, dtype=torch.int64), skipped)
