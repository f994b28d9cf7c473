"""Reading checkpoints: open one with a clear ``CheckpointError`` instead of a pickle or state-dict
traceback, and check that it fits the model and data of this run.

Lightning reports a wrong file as ``UnpicklingError``, as a list of missing and unexpected
state-dict keys, or (a class count that differs from the data's) as a label out of range deep in
a traceback; these checks say which file is wrong and what to pass. Building a model from a
checkpoint is ``loading.py``; writing checkpoints is ``training/checkpoint_io.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from cifar_lightning.errors import CheckpointError
from cifar_lightning.model.network import KerasCIFAR10CNN
from cifar_lightning.model.weights import SHIPPED, resolve_checkpoint

HINT = ("Pass a .ckpt file written by `python -m cifar_lightning fit` (in its checkpoints/ folder), or a "
        f"shipped model's name ({', '.join(SHIPPED)}).")
TO_START_AGAIN = "or leave out --ckpt_path to start from scratch."


def check_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's contents if ``path`` is a checkpoint of ``CIFAR10Classifier`` (or a shipped model's
    name, ``weights.SHIPPED``), else ``CheckpointError``."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}. {HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch raise a dozen types for "not a checkpoint"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}). {HINT}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no state_dict). {HINT}")
    hparams = checkpoint.get("hyper_parameters") or {}
    class_names = hparams.get("class_names")
    if class_names is None:
        raise CheckpointError(
            f"{path} is a checkpoint of another model: it lacks CIFAR10Classifier's hyperparameters "
            f"(found {sorted(k for k in hparams if not k.startswith('_')) or 'none'}). {HINT}"
        )
    if len(class_names) < 2:
        raise CheckpointError(f"{path} holds unusable class names ({list(class_names)}). {HINT}")
    # The network the checkpoint's own hyperparameters describe: its weights must fit it.
    reference = {f"net.{key}": value for key, value in KerasCIFAR10CNN(len(class_names)).state_dict().items()}
    check_compatible(checkpoint, reference, len(class_names), str(path))
    return checkpoint


def check_compatible(checkpoint: Mapping, expected: Mapping, num_classes: int, source: str = "The checkpoint") -> None:
    """Fail when the checkpoint's weights do not fit a model whose state dict is ``expected``:
    another class count, or another network."""
    saved = checkpoint.get("state_dict", {})
    saved_classes = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    if saved_classes is not None and len(saved_classes) != num_classes:
        raise CheckpointError(
            f"{source} was trained for {len(saved_classes)} classes but this run builds a model for "
            f"{num_classes} (model.class_names). Use a checkpoint trained on the same classes, {TO_START_AGAIN}"
        )
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    resized = [f"{key} {tuple(saved[key].shape)} vs {tuple(expected[key].shape)}"
               for key in sorted(set(saved) & set(expected)) if tuple(saved[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or resized:
        details = "; ".join(f"{label}: {first(items)}" for label, items in
                            (("missing", missing), ("unexpected", unexpected), ("other shape", resized)) if items)
        raise CheckpointError(
            f"{source} holds a different network from this model ({details}). Use a checkpoint of this "
            f"project's CIFAR10Classifier with the same settings, {TO_START_AGAIN}"
        )


def check_class_count(model_classes: int, data_classes: int, source: str) -> None:
    """The model's output size must match the data's labels (an explicit ``--ckpt_path`` sets the model's)."""
    if model_classes != data_classes:
        raise CheckpointError(
            f"The model has {model_classes} classes ({source}) but the data has {data_classes}. "
            f"Use a checkpoint trained on the same classes, {TO_START_AGAIN}"
        )


def first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def model_settings(checkpoint: Mapping) -> dict:
    """The model's settings a checkpoint stores (``hyper_parameters``), without Lightning's own
    bookkeeping entries (``_instantiator`` and the like): what ``CIFAR10Classifier`` takes."""
    return {key: value for key, value in (checkpoint.get("hyper_parameters") or {}).items() if not key.startswith("_")}
