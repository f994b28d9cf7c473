"""Checks for ``fit``/``validate``/``test`` beyond ``checkpoints.check_checkpoint`` (which checks an
explicit checkpoint file): a checkpoint reached through ``--ckpt_path last`` that does not fit the
configured model, a model whose class count differs from the data's, and an unwritable checkpoint
folder. Lightning would otherwise fail with a ``load_state_dict`` size mismatch or a label out of
range deep in a traceback, or, for an unwritable folder, only after the first epoch of work.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from torch import nn

from cifar_lightning.errors import CheckpointError


def state_dict_mismatch(saved: Mapping, expected: Mapping) -> tuple[list[str], list[str], list[str]]:
    """Keys ``expected`` has and ``saved`` lacks, keys only ``saved`` has, and shared keys of another shape."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    resized = sorted(key for key in set(saved) & set(expected) if tuple(saved[key].shape) != tuple(expected[key].shape))
    return missing, unexpected, resized


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
    missing, unexpected, resized = state_dict_mismatch(saved, expected)
    resized = [f"{key} {tuple(saved[key].shape)} vs {tuple(expected[key].shape)}" for key in resized]
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


def check_class_count(model_classes: int, data_classes: int, source: str) -> None:
    """The model's output size must match the data's labels (an explicit ``--ckpt_path`` sets the model's)."""
    if model_classes != data_classes:
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
