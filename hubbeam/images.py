"""Decode image bytes into what image modules take: float32 [H, W, 3] in [0, 1] at the module's size.

Pillow does the decoding. EXIF orientation is applied, animations contribute their first frame,
transparency is composited on white, and everything becomes RGB. The pixel count is checked from the
header before any pixel is decoded, so a decompression bomb is refused cheaply. PNG chunks must pass their
CRC check.
"""
from __future__ import annotations

import io
import zlib

import numpy as np

from hubbeam import settings
from hubbeam.errors import HubbeamError



class ImageDecodeError(HubbeamError):
    """An image that cannot be used; reason is a short code for dead-letter rows."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def max_pixels() -> int:
    return settings.MAX_IMAGE_PIXELS.get()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_crcs(data: bytes) -> None:
    """Refuse a PNG whose chunks fail their CRC: Pillow checks the header's chunks but not the pixel data's
    (IDAT), so a corrupted file would otherwise decode to wrong pixels without a word. A truncated file is
    left to the decoder, which refuses it."""
    view, position = memoryview(data), len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(view[position:position + 4], "big")
        end = position + 8 + length
        if end + 4 > len(data):
            return
        if zlib.crc32(view[position + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            name = bytes(view[position + 4:position + 8]).decode("latin-1")
            raise ImageDecodeError("undecodable_image", f"corrupt PNG: chunk {name!r} fails its CRC check")
        if view[position + 4:position + 8] == b"IEND":
            return
        position = end + 4


def decode_image(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """bytes -> float32 [height, width, 3] in [0, 1]; size is (height, width)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty_file", "empty file (0 bytes)")
    if data[:len(_PNG_SIGNATURE)] == _PNG_SIGNATURE:
        _check_png_crcs(data)
    # HUBBEAM_MAX_IMAGE_PIXELS is the one limit: Pillow's own (89 M pixels, a warning, then an error at twice
    # that) would refuse images the setting allows. It is checked from the header, before any pixel.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels():
            raise ImageDecodeError("too_large", f"{width}x{height} pixels exceeds the {max_pixels()} pixel limit")
        image.seek(0)
        image.draft("RGB", (size[1] * 2, size[0] * 2))  # JPEG: let the decoder downscale cheaply
        ImageOps.exif_transpose(image, in_place=True)  # the default returns a full-size copy even when upright
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        if image.mode.startswith("I"):  # 16-bit greyscale (PNG opens as I;16 or I): 0..65535 -> 0..255
            array = np.asarray(image, dtype=np.float32)
            image = Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8))
        image = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("undecodable_image", "not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError("undecodable_image", f"cannot decode image: {exc}") from exc
    return np.asarray(image, dtype=np.float32) / 255.0


def model_pixels(images, dtype: str = "float32", value_range=None) -> np.ndarray:
    """decode_image's arrays (float32 in [0, 1]) -> the batch a module takes: [N, H, W, 3] of its input dtype.

    The one place pixels become what a module expects, so the job, `hubbeam encode --image` and `hubbeam search
    --image` feed a module alike. uint8 inputs get 0-255 (the convention of modules that take raw pixels);
    float inputs get [0, 1], TF Hub's image convention, unless the module's metadata declares another
    value_range (e.g. [-1, 1]), which [0, 1] is stretched onto linearly.
    """
    batch = np.stack(images) if not isinstance(images, np.ndarray) else images
    if dtype == "uint8":
        return np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8)
    if value_range is not None and tuple(value_range) != (0.0, 1.0):
        low, high = (float(v) for v in value_range)
        batch = batch * (high - low) + low
    return batch.astype(np.float32, copy=False)  # other float dtypes: the loader casts to the input spec's
