"""A PyTorch Lightning reimplementation of a classic Keras CIFAR-10 CNN (420,842 parameters).

The layers, each importing only those below it: ground modules (``errors``, ``precision``, ``decode``,
``atomic``, ``summary_writer``, ``progress``) < ``robustness`` < ``data`` < ``model`` < ``calibration`` < ``training``
< ``infer`` < ``report`` < ``serve`` < ``cli`` (docs/development.md).
"""

from importlib.metadata import PackageNotFoundError, version

from cifar_lightning.data.datamodule import CIFAR10DataModule
from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.infer.predict import predict_images
from cifar_lightning.model.classifier import CIFAR10Classifier
from cifar_lightning.model.loading import load_classifier
from cifar_lightning.model.network import KerasCIFAR10CNN

try:
    __version__ = version("cifar-lightning")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = ["CIFAR10_CLASSES", "CIFAR10Classifier", "CIFAR10DataModule", "KerasCIFAR10CNN", "__version__",
           "load_classifier", "predict_images"]
