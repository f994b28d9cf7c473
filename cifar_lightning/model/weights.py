"""The shipped models by name, as torchvision lists its weights: each name with its file, the file's
SHA-256, the config that trained it and what it measured, so that ``load_classifier("cifar10_cnn_robust")``,
``--ckpt_path cifar10_cnn_robust`` and ``torch.hub.load(..., "cifar10_cnn_robust")`` find the same file.

The files are package data (``cifar_lightning/weights/``, 1.7 MB each), so a plain ``pip install``
brings them and nothing is downloaded: a CIFAR-10 model small enough to ship inside its package.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class Weights:
    """One shipped model: where it is, how to check it, where it came from, what it scores."""

    name: str
    sha256: str
    config: str
    summary: str
    # Test split, full precision, as served (its own tta_flip and temperature): docs/results.md,
    # docs/calibration.md, docs/robustness.md.
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.ckpt"

    def verify(self) -> None:
        """``ValueError`` unless the file on disk is the one this entry describes."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise ValueError(f"{self.path} has SHA-256 {digest}, not {self.sha256}: the file was changed or truncated.")


SHIPPED = {
    weights.name: weights
    for weights in (
        Weights(
            name="cifar10_cnn",
            sha256="40579dc52e43f0d4424e7e9838a60713882bce701d3c53ba810f551d78e27c6e",
            config="configs/base.yaml",
            summary="the original Keras recipe run to its early stop: the faithful reproduction",
            metrics={"test_accuracy": 0.8970, "test_ece": 0.0065, "temperature": 1.3644},
        ),
        Weights(
            name="cifar10_cnn_robust",
            sha256="c4e392860fc2b8f43718a9927eee3c65bd4c67eb09b1a0ae02bac330b02af134",
            config="configs/robust.yaml",
            summary=("60 epochs without dropout, half of each batch with JPEG, AugMix, noise and lowered contrast, "
                     "flip averaging: the recommended model"),
            metrics={"test_accuracy": 0.9099, "test_ece": 0.0049, "temperature": 0.6900},
        ),
    )
}


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """The file a ``--ckpt_path`` means: the path itself where a file is there, else the shipped model
    of that name (``cifar10_cnn``, ``cifar10_cnn_robust``), else the path as given (for the caller's
    "no checkpoint file" error)."""
    path = Path(path_or_name).expanduser()
    if not path.exists() and str(path_or_name) in SHIPPED:
        return SHIPPED[str(path_or_name)].path
    return path
