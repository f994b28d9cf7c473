"""Predicting from images people bring in Python: any file, any format Pillow reads, any size or
colour mode (decoded by ``decode.py``, as the HTTP service decodes an upload and the ``predict`` CLI
reads a folder, ``data/folders.py``). Paths, Pillow images or tensors in, class names and calibrated
probabilities (``CIFAR10Classifier.predict_proba``) out:

    from cifar_lightning.model.loading import load_classifier
    from cifar_lightning.infer.predict import predict_images

    model = load_classifier("cifar_lightning/weights/cifar10_cnn.ckpt")  # or CIFAR10Classifier.load_from_checkpoint(...)
    for p in predict_images(model, ["cat.jpg", "ship.png"]):
        print(p.class_name, p.probability, p.top(3))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from cifar_lightning.decode import (
    DECODE_ERRORS,
    IMAGE_SIZE,
    image_to_tensor,
    read_image,
    tensor_to_32,
    to_unit_float,
)
from cifar_lightning.errors import DataSourceError

if TYPE_CHECKING:  # the model is only a type here: any object with predict_proba and class_names works
    from cifar_lightning.model.classifier import CIFAR10Classifier


ImageInput = str | os.PathLike | Image.Image


@dataclass(frozen=True)
class Prediction:
    """The most likely class of one image and the probability of every class."""

    class_name: str
    probability: float
    probabilities: dict[str, float]  # every class, in the model's class order

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most likely (class name, probability) pairs, most likely first."""
        return sorted(self.probabilities.items(), key=lambda item: item[1], reverse=True)[:k]


def to_batch(images: Tensor | Sequence[ImageInput | Tensor]) -> Tensor:
    """Paths, Pillow images or (3, H, W) tensors -> one (N, 3, 32, 32) batch; a batch tensor is checked
    and resized if needed. uint8 stays uint8; float (in [0, 1]) anywhere makes the batch float."""
    if isinstance(images, Tensor):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"Expected images of shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}.")
        if batch.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):  # resized as a file is: Pillow, bicubic, to uint8
            batch = torch.stack([tensor_to_32(image) for image in batch])
        return batch
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if not isinstance(images, Sequence):
        raise ValueError(f"Cannot predict a {type(images).__name__}: {ACCEPTED}.")
    tensors = [one_image(image) for image in images]
    if not tensors:
        raise ValueError("No images given.")
    if any(t.dtype != torch.uint8 for t in tensors):
        tensors = [to_unit_float(t).float() for t in tensors]
    return torch.stack(tensors)


ACCEPTED = ("predict_images takes image file paths, Pillow images, (3, H, W) tensors, a list of any of "
            "these, or one (B, 3, H, W) tensor; tensors uint8 in [0, 255] or float in [0, 1]")


def one_image(image: ImageInput | Tensor) -> Tensor:
    """One image -> (3, 32, 32), uint8 from files and Pillow, a tensor's own dtype otherwise."""
    if isinstance(image, Tensor):
        if image.dim() != 3:
            raise ValueError(f"Expected each image tensor in a list to be (3, H, W), got {tuple(image.shape)}.")
        return to_batch(image)[0]
    if not isinstance(image, (str, os.PathLike, Image.Image)):
        raise ValueError(f"Cannot predict a {type(image).__name__}: {ACCEPTED}.")
    try:
        return image_to_tensor(image) if isinstance(image, Image.Image) else read_image(image)
    except DECODE_ERRORS as error:
        raise DataSourceError(f"{image} is not a readable image ({type(error).__name__}: {error}).") from None


@torch.inference_mode()
def predict_probabilities(model: CIFAR10Classifier, images: Tensor, batch_size: int = 500,
                          temperature: float | None = None) -> Tensor:
    """``model.predict_proba`` over ``images`` (N, 3, 32, 32), ``batch_size`` at a time on the model's
    device, in eval mode: probabilities (N, C) on the CPU. The model's train/eval mode is restored.
    ``temperature`` overrides the model's (1.0: as trained)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        chunks = [model.predict_proba(chunk.to(device), temperature).cpu() for chunk in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def predict_images(
    model: CIFAR10Classifier,
    images: Tensor | Sequence[ImageInput] | ImageInput,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> list[Prediction]:
    """Classify images with a trained model, one ``Prediction`` per image, in input order.

    Args:
        model: A trained classifier, e.g. from ``load_classifier(path)``.
        images: Image file paths or Pillow images (any size or colour mode: converted to RGB and
            resized to 32x32), (3, H, W) tensors, a list of any of these, or one (B, 3, H, W)
            tensor; tensors uint8 in [0, 255] or float in [0, 1].
        batch_size: Images per forward pass.
        device: Move the model there first (``"cuda"``, ``"cpu"``); ``None`` keeps it where it is.
    """
    if device is not None:
        model = model.to(device)
    probabilities = predict_probabilities(model, to_batch(images), batch_size)
    names = list(model.class_names)
    best_prob, best = probabilities.max(dim=-1)
    return [
        Prediction(names[i], p, dict(zip(names, row)))
        for i, p, row in zip(best.tolist(), best_prob.tolist(), probabilities.tolist())
    ]
