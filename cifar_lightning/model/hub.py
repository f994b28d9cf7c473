"""The shipped models as functions, one per name: what ``hubconf.py`` exposes to ``torch.hub.load``."""

from __future__ import annotations

import torch

from cifar_lightning.model.checkpoints import check_checkpoint, model_settings
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.model.loading import classifier_from_checkpoint
from cifar_lightning.model.weights import SHIPPED


def shipped(name: str, pretrained: bool = True, map_location: str | torch.device = "cpu") -> CIFAR10Classifier:
    """The shipped model ``name`` in eval mode; ``pretrained=False``: its settings, new weights."""
    checkpoint = check_checkpoint(SHIPPED[name].path)
    if pretrained:
        return classifier_from_checkpoint(checkpoint, map_location)
    hparams = model_settings(checkpoint)
    hparams["temperature"] = 1.0  # a temperature belongs to the weights it was fitted for
    return CIFAR10Classifier(**hparams).to(map_location).eval()


def cifar10_cnn(pretrained: bool = True, map_location: str | torch.device = "cpu") -> CIFAR10Classifier:
    """The original Keras recipe run to its early stop (configs/base.yaml): test accuracy 0.8970 (SHIPPED["cifar10_cnn"].metrics)."""
    return shipped("cifar10_cnn", pretrained, map_location)


def cifar10_cnn_robust(pretrained: bool = True, map_location: str | torch.device = "cpu") -> CIFAR10Classifier:
    """The recommended model (configs/robust.yaml): made to hold up on noisy, blurred or compressed photos."""
    return shipped("cifar10_cnn_robust", pretrained, map_location)
