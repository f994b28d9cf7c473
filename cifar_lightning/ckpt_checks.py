"""Checks that turn a bad ``--ckpt_path`` or an unwritable checkpoint folder into one clear message.

Lightning would otherwise fail with a ``FileNotFoundError``, an unpickling error or a
``load_state_dict`` size mismatch deep in a traceback, or, for an unwritable folder, only after
the first epoch of work.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from cifar_lightning.errors import CheckpointError

# ``--ckpt_path`` values that Lightning resolves itself rather than reading as a file name.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def check_checkpoint_file(ckpt_path: str | os.PathLike | None) -> None:
    """Fail fast when an explicit ``--ckpt_path`` is missing or is not a Lightning checkpoint."""
    if ckpt_path is None or str(ckpt_path) in SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"The checkpoint {path} does not exist. Pass the path of a .ckpt file written by `fit` "
            "(by default in checkpoints/), or --ckpt_path last to resume from checkpoints/last.ckpt."
        )
    if not path.is_file():
        raise CheckpointError(f"The checkpoint {path} is a folder, not a file. Pass one .ckpt file inside it.")
    try:
        # mmap: reads the index, not every tensor; the weights are loaded once more by Lightning.
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error):
            return  # a torch archive holding more than plain tensors: Lightning decides how to load it
        raise CheckpointError(
            f"{path} is not a PyTorch Lightning checkpoint (it could not be read: {type(error).__name__}). "
            "Pass a .ckpt file written by `fit`."
        ) from None
    except Exception as error:  # torch raises several types for files that are not its archives
        raise CheckpointError(
            f"{path} is not a PyTorch Lightning checkpoint (it could not be read: {type(error).__name__}). "
            "Pass a .ckpt file written by `fit`."
        ) from None
    required = ("state_dict", "pytorch-lightning_version")
    lacking = [key for key in required if not isinstance(checkpoint, Mapping) or key not in checkpoint]
    if lacking:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (it has no {' or '.join(map(repr, lacking))}). "
            "Pass a .ckpt file written by `fit`."
        )


def check_compatible(checkpoint: Mapping, model: nn.Module) -> None:
    """Fail when the checkpoint's weights do not fit ``model``: another architecture or class count."""
    saved = checkpoint.get("state_dict", {})
    expected = model.state_dict()
    saved_classes = checkpoint.get("hyper_parameters", {}).get("class_names")
    own_classes = getattr(model, "class_names", None)
    if saved_classes is not None and own_classes is not None and len(saved_classes) != len(own_classes):
        raise CheckpointError(
            f"The checkpoint was trained for {len(saved_classes)} classes but this run builds a model for "
            f"{len(own_classes)} (model.class_names). Use a checkpoint trained on the same classes, "
            "or leave out --ckpt_path to start from scratch."
        )
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    resized = [
        f"{key} {tuple(saved[key].shape)} vs {tuple(expected[key].shape)}"
        for key in sorted(set(saved) & set(expected))
        if saved[key].shape != expected[key].shape
    ]
    if missing or unexpected or resized:
        details = "; ".join(
            f"{label}: {_first(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("other shape", resized))
            if items
        )
        raise CheckpointError(
            f"The checkpoint holds a different network from this model ({details}). "
            "Use a checkpoint of this project's CIFAR10Classifier with the same settings, "
            "or leave out --ckpt_path to start from scratch."
        )


def check_class_count(model_classes: int, data_classes: int, ckpt_path: str | None) -> None:
    """The model's output size must match the data's labels (an explicit ``--ckpt_path`` sets the model's)."""
    if model_classes == data_classes:
        return
    source = "model.class_names"
    if ckpt_path is not None and str(ckpt_path) not in SPECIAL_CKPT_PATHS:
        source = f"taken from the checkpoint {ckpt_path}"
    raise CheckpointError(
        f"The model has {model_classes} classes ({source}) but the data has {data_classes}. "
        "Use a checkpoint trained on the same classes, or leave out --ckpt_path to start from scratch."
    )


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_writable(folders: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Create each ``(what, folder)`` and write a probe file in it, so training never starts without a place to save."""
    for what, folder in folders:
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise CheckpointError(
                f"Cannot write {what} to {folder.resolve()}: it is a file, not a folder. Move the file away, "
                "or point the config at another folder (ModelCheckpoint dirpath, logger save_dir)."
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as error:
            raise CheckpointError(
                f"Cannot write {what} to {folder.resolve()} ({error.strerror or error}). Run from a folder you "
                "can write to, or point the config at one (ModelCheckpoint dirpath, logger save_dir)."
            ) from None
