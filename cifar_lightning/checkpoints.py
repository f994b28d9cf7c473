"""Open a checkpoint with a clear ``CheckpointError`` instead of a pickle or state-dict traceback.

Lightning's own loading reports a wrong file as ``UnpicklingError`` or as a list of
missing and unexpected state-dict keys; these checks say which file is wrong and what to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cifar_lightning.ckpt_checks import state_dict_mismatch
from cifar_lightning.errors import CheckpointError
from cifar_lightning.module import CIFAR10Classifier

HINT = "Pass a .ckpt file written by `python -m cifar_lightning fit` (in its checkpoints/ folder)."


def check_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's contents if ``path`` is a checkpoint of ``CIFAR10Classifier``, else ``CheckpointError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}. {HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch raise a dozen types for "not a checkpoint"
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}). {HINT}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no state_dict). {HINT}")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "class_names" not in hparams:
        raise CheckpointError(
            f"{path} is a checkpoint of another model: it lacks CIFAR10Classifier's hyperparameters "
            f"(found {sorted(k for k in hparams if not k.startswith('_')) or 'none'}). {HINT}"
        )
    try:
        reference = CIFAR10Classifier(class_names=hparams["class_names"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds unusable class names ({error}). {HINT}") from None
    missing, unexpected, resized = state_dict_mismatch(checkpoint["state_dict"], reference.state_dict())
    if missing or unexpected or resized:
        differ = sorted(missing + unexpected) or resized
        raise CheckpointError(
            f"{path} is a checkpoint of another model: its weights do not fit CIFAR10Classifier "
            f"({len(differ)} tensors differ, e.g. {differ[:3]}). {HINT}"
        )
    return checkpoint


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CIFAR10Classifier:
    """A trained ``CIFAR10Classifier`` from a checkpoint, in eval mode, after ``check_checkpoint``."""
    check_checkpoint(path)
    model = CIFAR10Classifier.load_from_checkpoint(Path(path).expanduser(), map_location=map_location)
    return model.eval()
