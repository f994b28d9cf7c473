"""Checkpoint writes that a kill can never leave half done.

Lightning's own save (``lightning.fabric.utilities.cloud_io._atomic_save``) writes the file in the
system temp folder and then moves it into place. That move is a rename only when the temp folder
and the checkpoint folder share a file system; otherwise (a tmpfs ``/tmp``, checkpoints on a
network disk) it is a copy straight into ``last.ckpt``, and a process killed during the copy
leaves a truncated ``last.ckpt``. Writing beside the target and renaming makes the final step a
single ``os.replace`` on one file system wherever the checkpoints live.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


def save_atomically(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to ``.<name>.<pid>.tmp`` beside ``path``, fsync, rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``.<name>.<pid>.tmp`` in the checkpoint folder, syncs it and renames it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            # Object stores (s3://, gs://) replace an object in one step already.
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}.")
        save_atomically(checkpoint, path)
