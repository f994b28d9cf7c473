"""Writing checkpoints: atomically, so a kill never leaves half a file, and with the random
generators' states, so a resumed run draws the numbers an uninterrupted one would: the two
checkpoint helpers the CLI adds to every run. Reading and checking checkpoints is
``model/checkpoints.py``; the atomic write itself is ``atomic.py``.

Atomic writes:
Lightning's own save (``lightning.fabric.utilities.cloud_io._atomic_save``) writes the file in the
system temp folder and then moves it into place. That move is a rename only when the temp folder
and the checkpoint folder share a file system; otherwise (a tmpfs ``/tmp``, checkpoints on a
network disk) it is a copy straight into ``last.ckpt``, and a process killed during the copy
leaves a truncated ``last.ckpt``. Writing beside the target and renaming makes the final step a
single ``os.replace`` on one file system wherever the checkpoints live (``atomic.save_atomically``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cifar_lightning.atomic import save_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``.<name>.<pid>.tmp`` in the checkpoint folder, syncs it and renames it.

    Args:
        preloaded: ``{path: contents}`` of checkpoints already read (the CLI's ``--ckpt_path``, read
            once to check it): loading one of those paths returns its contents, once, instead of
            reading the file again.
    """

    def __init__(self, preloaded: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.preloaded = {local_key(path): contents for path, contents in (preloaded or {}).items()}

    def load_checkpoint(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        contents = self.preloaded.pop(local_key(path), None) if isinstance(get_filesystem(path), LocalFileSystem) else None
        return contents if contents is not None else super().load_checkpoint(path, *args, **kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            # Object stores (s3://, gs://) replace an object in one step already.
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}.")
        save_atomically(checkpoint, path)


def local_key(path: str | os.PathLike) -> str:
    """One spelling of a local path, whichever way it was written."""
    return str(Path(path).expanduser().resolve())


class RNGStateCheckpoint(Callback):
    """Saves the random generators' states in every checkpoint and puts them back on resume.

    Lightning checkpoints hold weights, optimizer, loop and callback state but not the generators
    behind the shuffle order, the augmentation and dropout. Without them a resumed run draws other
    random numbers than the run that was never stopped. Restored when the checkpoint is loaded,
    before training starts (Lightning runs its sanity check inside ``isolate_rng``), so a run
    resumed from an end-of-epoch checkpoint continues with the very numbers it would have drawn.
    All values are tensors or plain Python, so the checkpoint still loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
