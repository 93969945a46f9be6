"""lejepa_ray.data.decode: every kind of bad input is refused with its reason or made RGB."""

from __future__ import annotations

import numpy as np
import pytest
from images import (
    corrupt_png,
    encode,
    exif_rotated_jpeg,
    photo,
    png_header_only,
    truncated_jpeg,
)
from PIL import Image

from lejepa_ray.data import decode
from lejepa_ray.data.decode import BadImage, decode_rgb


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(BadImage) as info:
        decode_rgb(data, **kwargs)
    return info.value.reason


def test_good_jpeg_decodes_to_rgb():
    img = decode_rgb(photo(64, 48))
    assert img.mode == "RGB" and img.size == (64, 48)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", decode.EMPTY),
        (None, decode.EMPTY),
        (b"this is a text file renamed to .jpg\n" * 10, decode.NOT_AN_IMAGE),
        (truncated_jpeg(), decode.TRUNCATED),
        (corrupt_png(), decode.CORRUPT),
    ],
    ids=["zero-bytes", "null", "not-an-image", "truncated", "corrupt"],
)
def test_bad_bytes_are_refused_with_their_reason(data, reason):
    assert reason_of(data) == reason


def test_decompression_bomb_is_refused_from_the_header():
    # 30,000 × 30,000 = 900 Mpx: refused before a single pixel is allocated.
    assert reason_of(png_header_only(30_000, 30_000)) == decode.TOO_LARGE


def test_pixel_limit_is_configurable():
    data = photo(100, 100, fmt="PNG")
    assert reason_of(data, max_pixels=9_999) == decode.TOO_LARGE
    assert decode_rgb(data, max_pixels=10_000).size == (100, 100)


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L")
    rgb = np.asarray(decode_rgb(encode(gray)))
    assert rgb.shape == (16, 16, 3)
    assert (rgb[..., 0] == np.arange(256).reshape(16, 16)).all()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))
    rgb = np.asarray(decode_rgb(encode(img, transparency=0)))
    assert tuple(rgb[0, 0]) == (200, 10, 10)  # opaque palette entry kept
    assert tuple(rgb[0, 7]) == (255, 255, 255)  # transparent entry becomes white


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 2:] = (0, 0, 0, 0)  # fully transparent black
    rgb = np.asarray(decode_rgb(encode(Image.fromarray(rgba, mode="RGBA"))))
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    assert tuple(rgb[0, 3]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    img = decode_rgb(encode(cmyk, "JPEG", quality=95))
    r, g, b = np.asarray(img)[8, 8].tolist()
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped():
    wide = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(wide))
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    rgb = np.asarray(decode_rgb(data))
    assert rgb[0, :, 0].tolist() == [0, 100, 127, 255]


def test_exif_orientation_is_honoured():
    img = decode_rgb(exif_rotated_jpeg())
    assert img.size == (20, 40)  # rotated to portrait
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
