"""Decoding a user's image into what the model takes: one module, so the ``predict`` CLI,
``predict_images``, the HTTP service, the JPEG robustness score and the data set reader all see a
file the same way.

Any format Pillow reads, any size or colour mode: EXIF rotation applied, transparency composited on
white, converted to RGB and resized to 32x32 (uint8 ``(3, 32, 32)``). What Pillow cannot decode
raises one of ``DECODE_ERRORS``; callers turn that into a skip or a 400 with its reason.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_SIZE = 32
# What Pillow raises for truncated, corrupt or non-image files.
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as it is."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> RGB at its own size: EXIF rotation applied, transparency on white."""
    image = ImageOps.exif_transpose(image)
    if "A" in image.getbands() or "transparency" in image.info:
        # Convert alone would turn transparent pixels into whatever colour they hide (often black).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def to_rgb32(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Any Pillow image -> RGB ``size`` x ``size`` (``to_rgb``, then squashed to the square)."""
    image = to_rgb(image)
    if image.size != (size, size):
        # Pillow widens the filter when shrinking (antialiased), so large photos do not alias.
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def image_to_tensor(image: Image.Image) -> Tensor:
    """Any Pillow image -> uint8 (3, 32, 32) (``to_rgb32``)."""
    return torch.from_numpy(np.asarray(to_rgb32(image)).copy()).permute(2, 0, 1)


def read_image(path: str | os.PathLike) -> Tensor:
    """One image file -> uint8 (3, 32, 32); one of ``DECODE_ERRORS`` if it is not a readable image."""
    with Image.open(path) as image:
        image.load()
        return image_to_tensor(image)


def decode_image_bytes(data: bytes) -> Tensor:
    """An image file's bytes (an upload) -> uint8 (3, 32, 32), as ``read_image`` reads the file."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image_to_tensor(image)
