"""Decoding a user's image into what the model takes: one module, so the ``predict`` CLI,
``predict_images``, the HTTP service, the JPEG robustness score and the data set reader all see a
file the same way.

Any format Pillow reads, any size or colour mode: EXIF rotation applied, transparency composited on
white, 16- and 32-bit greyscale scaled to 8 bits by their range (not clipped), converted to RGB and
resized to 32x32 (uint8 ``(3, 32, 32)``). What Pillow cannot decode raises one of ``DECODE_ERRORS``;
callers turn that into a skip or a 400 with its reason.

Only 32x32 pixels are needed, so a file's own header is checked before anything is decoded: an image
over ``MAX_PIXELS`` is refused (``ImageTooLarge``) without decoding it, a large JPEG is decoded at a
reduced scale (``Image.draft``), and an animation's first frame alone is decoded.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_SIZE = 32
MAX_PIXELS = 40_000_000  # the largest image decoded (a 40-megapixel photo); larger ones are refused unread
JPEG_DRAFT_PIXELS = 2_000_000  # JPEGs over this are decoded at 1/2 to 1/8 scale, still 8x the size kept
# What Pillow raises for truncated, corrupt or non-image files (ImageTooLarge is a ValueError).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
ORIENTATION_TAG = 0x0112  # EXIF Orientation


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the budget, refused before it is decoded."""


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as it is."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer and float images (modes I;16*, I, F) -> 8-bit greyscale ("L"), scaled by
    their range rather than clipped at 255: 16-bit types by 65,535, 32-bit integers holding 8- or
    16-bit values by 255 or 65,535, floats in [0, 1] or [0, 255] by 1 or 255, anything else from its
    minimum to its maximum. Other modes are returned as they are."""
    if image.mode not in HIGH_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"the {image.mode} image holds values that are not finite numbers (NaN or infinity)")
    low, high = float(values.min()), float(values.max())
    if image.mode.startswith("I;16"):
        low, top = 0.0, 65535.0
    else:
        tops = (1.0, 255.0, 65535.0) if image.mode == "F" else (255.0, 65535.0)
        top = next((t for t in tops if low >= 0 and high <= t), None)
        low, top = (0.0, top) if top is not None else (low, max(high - low, 1e-12))
    scaled = np.rint((values - low) / top * 255)
    return Image.fromarray(scaled.clip(0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def oriented(image: Image.Image) -> Image.Image:
    """EXIF rotation applied (a new image), or the image itself where there is none to apply: Pillow's
    ``exif_transpose`` would copy it regardless, tens of megabytes for a large photo."""
    if image.getexif().get(ORIENTATION_TAG, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """Any 8-bit Pillow image -> RGB, transparency composited on white."""
    if "A" in image.getbands() or "transparency" in image.info:
        # Convert alone would turn transparent pixels into whatever colour they hide (often black).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> RGB at its own size: EXIF rotation applied, high bit depths scaled to 8
    bits (``to_8bit``), transparency on white."""
    return flatten_to_rgb(to_8bit(oriented(image)))


def to_rgb32(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Any Pillow image -> RGB ``size`` x ``size`` (``to_rgb``, then squashed to the square).

    Greyscale and RGB images without transparency are resized before the conversion to RGB: the
    same pixels (converting greyscale repeats the one channel), without a full-size RGB copy, which
    for a 40-megapixel greyscale image is 120 MB."""
    image = to_8bit(oriented(image))
    if image.size != (size, size) and image.mode in ("L", "RGB") and "transparency" not in image.info:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    image = flatten_to_rgb(image)
    if image.size != (size, size):
        # Pillow widens the filter when shrinking (antialiased), so large photos do not alias.
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def image_to_tensor(image: Image.Image) -> Tensor:
    """Any Pillow image -> uint8 (3, 32, 32) (``to_rgb32``)."""
    return torch.from_numpy(np.asarray(to_rgb32(image)).copy()).permute(2, 0, 1)


def tensor_to_32(image: Tensor) -> Tensor:
    """A (3, H, W) tensor (uint8 in [0, 255] or float in [0, 1]) -> uint8 (3, 32, 32) through the same
    Pillow resize as a file (``to_rgb32``): the one resize of every input. A float image is rounded to
    8 bits first, as a file holds it; an image already 32x32 is returned as it is, in its own dtype."""
    if image.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    pixels = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image_to_tensor(Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()))


def open_header(source: str | os.PathLike | io.BytesIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file with only its header read: ``ImageTooLarge`` when it declares more than
    ``max_pixels``; a JPEG over ``JPEG_DRAFT_PIXELS`` set to decode at a reduced scale (its ``size``
    is then what will be decoded). Close it (or use ``with``) when done."""
    image = Image.open(source)
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the "
                f"{max_pixels / 1e6:.0f}-megapixel limit: send a smaller image (the model looks at 32x32)")
        if image.format == "JPEG" and width * height > JPEG_DRAFT_PIXELS:
            image.draft("RGB", (IMAGE_SIZE * 8, IMAGE_SIZE * 8))
    except BaseException:
        image.close()
        raise
    return image


def open_image(source: str | os.PathLike | io.BytesIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file, decoded within the pixel budget (``open_header``): refused from its header when
    too large, a large JPEG at a reduced scale, an animation's first frame only. Close it when done."""
    image = open_header(source, max_pixels)
    try:
        image.load()  # the current frame: the first, as Image.open leaves it
    except BaseException:
        image.close()
        raise
    return image


def load_tensor(image: Image.Image) -> Tensor:
    """An image from ``open_header`` -> uint8 (3, 32, 32), decoding it and closing it: a service
    opens the header first, to price the decode (``image.size``), and decodes only then."""
    with image:
        image.load()
        return image_to_tensor(image)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Tensor:
    """One image file -> uint8 (3, 32, 32); one of ``DECODE_ERRORS`` if it is not a readable image
    (``ImageTooLarge`` if it is over ``max_pixels``)."""
    with open_image(path, max_pixels) as image:
        return image_to_tensor(image)


def decode_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS) -> Tensor:
    """An image file's bytes (an upload) -> uint8 (3, 32, 32), as ``read_image`` reads the file."""
    with open_image(io.BytesIO(data), max_pixels) as image:
        return image_to_tensor(image)
