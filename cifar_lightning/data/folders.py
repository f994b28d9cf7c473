"""Folders of images people bring, for ``predict --data.predict_dir`` and ``calibrate --image_dir``:
every file under a folder, decoded as the service decodes an upload (``decode.py``), unreadable
files skipped and named (unlike training data, where a bad file is an error), labels taken from
the parent folder's name where it is a class name."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cifar_lightning.decode import DECODE_ERRORS, read_image
from cifar_lightning.errors import DataSourceError
from cifar_lightning.progress import progress


@dataclass(frozen=True)
class ImageFolder:
    """Decoded images of a predict folder, with what was skipped and why."""

    images: Tensor  # (N, 3, 32, 32) uint8
    paths: list[str]  # the N files, in the order of ``images``
    labels: Tensor  # (N,) int64: class index from the parent folder's name, -1 where it names no class
    skipped: list[str] = field(default_factory=list)  # "path (reason)" for files that are not images


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
    for path in progress(files, f"Reading {root}"):
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
