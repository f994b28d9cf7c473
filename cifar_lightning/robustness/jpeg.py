"""JPEG re-encoding of decoded images: how robust a model is to the compressed thumbnails users send."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor

from cifar_lightning.decode import image_to_tensor
from cifar_lightning.errors import ConfigError


def check_jpeg_quality(quality: int | None) -> None:
    """Pillow's quality scale runs 1-95 (above 95 it only grows the file)."""
    if quality is not None and not 1 <= quality <= 95:
        raise ConfigError(f"jpeg_quality must be between 1 and 95 (Pillow's scale; 75 is its default), got {quality}.")


def reencode_jpeg(images: Tensor, quality: int) -> Tensor:
    """uint8 images (N, 3, H, W) -> the same images saved as JPEG by Pillow at ``quality`` and decoded
    again (Pillow's defaults otherwise, 4:2:0 chroma subsampling among them, as a thumbnail gets),
    decoded by ``decode.image_to_tensor``, as a user's JPEG file would be."""
    out = torch.empty_like(images)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = image_to_tensor(decoded)
    return out
