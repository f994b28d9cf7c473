"""A PyTorch Lightning reimplementation of a classic Keras CIFAR-10 CNN (420,842 parameters)."""

from cifar_lightning.datamodule import CIFAR10DataModule
from cifar_lightning.module import CIFAR10Classifier
from cifar_lightning.network import KerasCIFAR10CNN
from cifar_lightning.sources import CIFAR10_CLASSES

__all__ = ["CIFAR10_CLASSES", "CIFAR10Classifier", "CIFAR10DataModule", "KerasCIFAR10CNN"]
