"""Encoded test images, good and bad, generated in memory (nothing is downloaded)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def photo(width: int = 64, height: int = 48, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A smooth random RGB image, encoded."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    return encode(img, fmt)


def truncated_jpeg() -> bytes:
    data = photo(128, 96)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    """A PNG whose header is valid but whose pixel data is not a zlib stream."""
    data = bytearray(encode(Image.new("RGB", (32, 32), (10, 200, 30))))
    start = data.index(b"IDAT") + 4
    data[start : start + 16] = b"\x00" * 16
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` pixels but carries no pixel data: a bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide × 20 high, left half red, right half blue, tagged 'rotate 90° clockwise'."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90° clockwise
    return encode(img, "JPEG", exif=exif, quality=95)


def make_image_folder(root, per_class: int = 6, bad: bool = True) -> dict:
    """An ImageNet-style folder: ``cat/`` and ``dog/`` of good images, plus bad files if asked.

    Returns the expected counts: ``good`` images, ``bad`` per reason.
    """
    from pathlib import Path

    root = Path(root)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 3]
            (root / name / f"{i:03d}.{ext}").write_bytes(
                photo(48 + 8 * i, 40, seed=100 * c + i, fmt=fmt)
            )
    (root / "cat" / "notes.txt").write_text("not an image extension: ignored entirely")
    (root / "cat" / ".hidden.jpg").write_bytes(b"hidden files are ignored")
    expected = {"good": 2 * per_class, "bad": {}}
    if bad:
        (root / "dog" / "empty.jpg").write_bytes(b"")
        (root / "dog" / "readme.png").write_text("a text file with an image extension")
        (root / "cat" / "cut.JPG").write_bytes(truncated_jpeg())
        (root / "cat" / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
        expected["bad"] = {"empty": 1, "not_an_image": 1, "truncated": 1, "too_large": 1}
    return expected
