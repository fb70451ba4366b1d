"""Image decoding for image modules: real files made with Pillow, every outcome checked."""
import io

import numpy as np
import pytest
from PIL import Image

from hubbeam.images import ImageDecodeError, decode_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_formats_decode_to_rgb_float_at_requested_size(fmt):
    image = Image.new("RGB", (50, 20), (255, 0, 0))
    out = decode_image(encode(image, fmt), (32, 16))
    assert out.shape == (32, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert out[..., 0].mean() > 0.9 and out[..., 1].mean() < 0.1


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95), (40, 20))
    assert out.shape == (40, 20, 3)
    assert out[:18].mean() > 0.9 and out[22:].mean() < 0.1  # white now on top


def test_transparency_is_composited_on_white_and_16bit_grey_scaled():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG"), (8, 8)).min() == 1.0
    grey16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    np.testing.assert_allclose(decode_image(encode(grey16, "PNG"), (8, 8)), 1.0)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 255, 255), (0, 0, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, (8, 8)).mean() > 0.9


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (b"this is text, not a picture", "undecodable_image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "undecodable_image"),
])
def test_unusable_bytes_get_a_reason(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, (8, 8))
    assert info.value.reason == reason


def test_truncated_jpeg_is_refused():
    data = encode(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: len(data) // 2], (8, 8))
    assert info.value.reason == "undecodable_image"


def test_decompression_bomb_refused_from_header(monkeypatch):
    monkeypatch.setenv("HUBBEAM_MAX_IMAGE_PIXELS", "1000000")
    bomb = encode(Image.new("1", (4000, 4000)), "PNG")  # 16 Mpx, a few KB on disk
    assert len(bomb) < 50_000
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bomb, (8, 8))
    assert info.value.reason == "too_large"


def test_the_pixel_limit_is_hubbeams_own_not_pillows(monkeypatch):
    """HUBBEAM_MAX_IMAGE_PIXELS above Pillow's own 89 M-pixel cap is honoured (Pillow's warning-as-error refused
    such images before), and below it refuses as before. 9,500 x 9,500 = 90.25 M pixels; a JPEG, so the decoder
    downscales while decoding and the test stays light."""
    buffer = io.BytesIO()
    Image.new("RGB", (9500, 9500), (200, 40, 40)).save(buffer, format="JPEG", quality=50)
    data = buffer.getvalue()
    monkeypatch.setenv("HUBBEAM_MAX_IMAGE_PIXELS", str(100_000_000))
    pixels = decode_image(data, (8, 8))
    assert pixels.shape == (8, 8, 3) and abs(float(pixels[..., 0].mean()) - 200 / 255) < 0.02
    monkeypatch.setenv("HUBBEAM_MAX_IMAGE_PIXELS", str(90_000_000))
    with pytest.raises(ImageDecodeError, match="9500x9500 pixels exceeds the 90000000 pixel limit") as info:
        decode_image(data, (8, 8))
    assert info.value.reason == "too_large"
