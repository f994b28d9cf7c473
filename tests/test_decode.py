"""decode.py: a user's file read within a pixel budget (refused from its header alone when too large,
large JPEGs decoded reduced, animations' first frame), and every bit depth scaled, not clipped."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lightning.data.folders import read_predict_folder
from cifar_lightning.data.sources import CIFAR10_CLASSES
from cifar_lightning.decode import (
    JPEG_DRAFT_PIXELS,
    ImageTooLarge,
    decode_image_bytes,
    image_to_tensor,
    read_image,
)

from conftest import synthetic_images


def gif_bomb(width: int = 13000, height: int = 13000) -> bytes:
    """A GIF of a few dozen bytes whose header declares width x height pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(size=(32, 32)) -> Image.Image:
    images, _ = synthetic_images(1, seed=11)
    return Image.fromarray(images[3]).resize(size, Image.Resampling.BICUBIC)


def test_a_decompression_bomb_is_refused_from_its_header_fast_and_small():
    bomb = gif_bomb()
    assert len(bomb) < 50
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"13000x13000 pixels \(169 megapixels\), over the 40-megapixel limit"):
        decode_image_bytes(bomb)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 10 * 1024 * 1024
    with pytest.raises(ImageTooLarge, match="100x80 pixels"):
        decode_image_bytes(encoded(photo((100, 80)), "PNG"), max_pixels=5000)


def test_a_folder_with_a_bomb_skips_it_with_its_reason(tmp_path):
    (tmp_path / "cat").mkdir()
    photo().save(tmp_path / "cat" / "fine.png")
    (tmp_path / "bomb.gif").write_bytes(gif_bomb())
    start = time.perf_counter()
    folder = read_predict_folder(tmp_path, CIFAR10_CLASSES)
    assert time.perf_counter() - start < 1.0
    assert [p.rsplit("/", 1)[-1] for p in folder.paths] == ["fine.png"]
    (skipped,) = folder.skipped
    assert "bomb.gif" in skipped and "ImageTooLarge" in skipped and "40-megapixel limit" in skipped


def test_a_large_jpeg_is_decoded_reduced_and_looks_the_same():
    big = photo((2400, 1600))
    assert 2400 * 1600 > JPEG_DRAFT_PIXELS
    data = encoded(big, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        reference = image_to_tensor(full)
    reduced = decode_image_bytes(data)
    assert (reduced.float() - reference.float()).abs().mean() < 2.0  # of 255: the same 32x32 picture


def test_an_animation_gives_its_first_frame():
    first, second = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    data = encoded(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert decode_image_bytes(data)[:, 16, 16].tolist() == [255, 0, 0]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt):
    grey8 = photo().convert("L")
    pixels8 = np.asarray(grey8)
    grey16 = Image.fromarray(pixels8.astype(np.uint16) * 257)  # mode I;16
    with Image.open(io.BytesIO(encoded(grey16, fmt))) as reopened:
        assert reopened.mode in ("I;16", "I;16B", "I", "I;16L")
    from_16 = decode_image_bytes(encoded(grey16, fmt))
    assert torch.equal(from_16, decode_image_bytes(encoded(grey8, fmt)))
    assert from_16.float().mean() < 250  # not the all-white image that clipping at 255 gives


def test_32_bit_integer_and_float_images_are_scaled_by_their_range():
    pixels8 = np.asarray(photo().convert("L"))
    expected = decode_image_bytes(encoded(Image.fromarray(pixels8), "PNG"))
    as_int = Image.fromarray(pixels8.astype(np.int32) * 257)  # mode I
    as_unit_float = Image.fromarray(pixels8.astype(np.float32) / 255)  # mode F
    as_byte_float = Image.fromarray(pixels8.astype(np.float32))
    for image in (as_int, as_unit_float, as_byte_float):
        assert (decode_image_bytes(encoded(image, "TIFF")).int() - expected.int()).abs().max() <= 1, image.mode
    nan = Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="not finite numbers"):
        decode_image_bytes(encoded(nan, "TIFF"))


def test_read_image_and_bytes_agree(tmp_path):
    path = tmp_path / "p.webp"
    photo((70, 50)).save(path)
    assert torch.equal(read_image(path), decode_image_bytes(path.read_bytes()))
