"""Encoded bytes to an RGB image, or a named reason why not.

Every image the platform trains on or converts goes through :func:`decode_rgb`, so a bad file is
rejected the same way everywhere and counted under the same reason.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: PIL's own default decompression-bomb limit (about 89 Mpx, a 9459×9459 image).
DEFAULT_MAX_PIXELS = 89_478_485

# Reasons a sample is skipped; these strings are the keys of every skip count we report.
EMPTY = "empty"  # zero bytes (or a null cell in parquet)
NOT_AN_IMAGE = "not_an_image"  # no image format recognises the header
TRUNCATED = "truncated"  # the header is fine but the pixel data ends early
CORRUPT = "corrupt"  # the decoder failed for another reason
TOO_LARGE = "too_large"  # more pixels than the limit: a possible decompression bomb
SKIP_REASONS = (EMPTY, NOT_AN_IMAGE, TRUNCATED, CORRUPT, TOO_LARGE)

# Modes whose samples are wider than 8 bits; PIL's convert("RGB") clips them instead of scaling.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BadImage(Exception):
    """A sample that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SkipCounts(Counter):
    """Skipped samples per reason (a ``Counter`` keyed by the strings in :data:`SKIP_REASONS`)."""

    @property
    def total(self) -> int:  # type: ignore[override]  # Counter's (3.10+) is a method
        return sum(self.values())


def decode_rgb(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into a fully loaded 8-bit RGB image, EXIF orientation applied.

    Grayscale, palette, RGBA (composited over white), CMYK and 16-bit images are converted to
    RGB; 16-bit samples are scaled to 8 bits rather than clipped. The pixel count is checked from
    the header, before any pixel is decoded, so a decompression bomb costs nothing.

    Raises:
        BadImage: with the reason the sample must be skipped.
    """
    if not data:
        raise BadImage(EMPTY, "zero bytes")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadImage(TOO_LARGE, str(e)) from None
    except UnidentifiedImageError:
        raise BadImage(NOT_AN_IMAGE, "no known image format in the header") from None
    except Exception as e:  # PIL raises a zoo of types for mangled headers
        raise BadImage(CORRUPT, f"{type(e).__name__}: {e}") from None

    width, height = img.size
    if width * height > max_pixels:
        raise BadImage(TOO_LARGE, f"{width}x{height} is more than the {max_pixels:,}-pixel limit")
    if width == 0 or height == 0:
        raise BadImage(CORRUPT, f"image has size {width}x{height}")
    try:
        img.load()
        img = _to_rgb(_upright(img))
    except OSError as e:
        reason = TRUNCATED if "truncated" in str(e) else CORRUPT
        raise BadImage(reason, str(e)) from None
    except Exception as e:
        raise BadImage(CORRUPT, f"{type(e).__name__}: {e}") from None
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if img.mode == "P":
        # Palette images may carry transparency; resolve it before dropping alpha.
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale a wide single-channel array to 0..255: 16-bit integers by 1/257, floats by range."""
    if pixels.dtype.kind == "f":
        lo, hi = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        scaled = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
        return np.nan_to_num(scaled * 255.0).round().astype(np.uint8)
    return (np.clip(pixels.astype(np.int64), 0, 65535) // 257).astype(np.uint8)


# Refuse truncated files instead of silently padding them with grey (PIL's default, but be sure).
ImageFile.LOAD_TRUNCATED_IMAGES = False
# The pixel limit is ``max_pixels``, checked above from the header; PIL's global limit would cap
# it at twice its default whatever the user configured.
Image.MAX_IMAGE_PIXELS = None
