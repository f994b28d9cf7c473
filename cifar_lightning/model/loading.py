"""A trained model from a checkpoint file, the file read once.

``check_checkpoint`` opens and checks the file; the model is built from that same dictionary (its
hyperparameters, then its weights), so a command that checks a checkpoint and then uses it reads
the file one time, and a wrong file is a clear ``CheckpointError`` before anything is built.
"""

from __future__ import annotations

import os

import torch

from cifar_lightning.model.checkpoints import check_checkpoint, model_settings
from cifar_lightning.model.classifier import CIFAR10Classifier


def classifier_from_checkpoint(checkpoint: dict, map_location: str | torch.device = "cpu") -> CIFAR10Classifier:
    """A ``CIFAR10Classifier`` in eval mode from a checkpoint's contents (as ``check_checkpoint`` returns
    them): what ``CIFAR10Classifier.load_from_checkpoint`` builds, without reading the file again."""
    hparams = model_settings(checkpoint)
    model = CIFAR10Classifier(**hparams)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> tuple[CIFAR10Classifier, dict]:
    """(the model, the checkpoint's contents) of a checkpoint file, read once and checked."""
    checkpoint = check_checkpoint(path)
    return classifier_from_checkpoint(checkpoint, map_location), checkpoint


def load_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CIFAR10Classifier:
    """A trained ``CIFAR10Classifier`` from a checkpoint file, in eval mode (the file read once)."""
    return load_checkpoint(path, map_location)[0]
