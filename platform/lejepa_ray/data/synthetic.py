"""Procedurally generated images whose class is recoverable from what they show.

Class ``c`` is a shape (``c % 5``: disc, square, triangle, cross, ring) drawn over a striped
background (``c // 5``: four stripe angles times two stripe periods). Colours, position, size,
rotation and stripe phase are random nuisances. Image ``i`` is a pure function of
(seed, i, size, num_classes), so any count can be generated anywhere without storing it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "cross", "ring")
MAX_CLASSES = len(SHAPES) * 8


def synthetic_label(index: int, num_classes: int) -> int:
    """Class of image ``index``: classes are balanced by construction."""
    return index % num_classes


def synthetic_image(index: int, seed: int, size: int, num_classes: int) -> Image.Image:
    """The RGB image number ``index`` of the synthetic dataset, ``size`` × ``size`` pixels."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes} is invalid: expected 2..{MAX_CLASSES}.")
    label = synthetic_label(index, num_classes)
    shape, texture = label % len(SHAPES), label // len(SHAPES)
    rng = np.random.default_rng([seed, index])

    # Background: stripes whose angle and period encode the texture part of the class.
    angle = math.radians(45 * (texture % 4))
    period = size / (12 if texture < 4 else 5)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, period)
    stripes = (((x * math.cos(angle) + y * math.sin(angle) + phase) // period) % 2).astype(bool)
    dark, light = rng.integers(0, 110, 3), rng.integers(145, 256, 3)
    pixels = np.where(stripes[..., None], dark, light).astype(np.uint8)
    img = Image.fromarray(pixels, mode="RGB")

    # Foreground: one shape with a colour far from both stripe colours.
    draw = ImageDraw.Draw(img)
    radius = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(radius, size - radius, 2)
    rotation = rng.uniform(0, 2 * math.pi)
    colour = tuple(int(v) for v in rng.permutation([rng.integers(200, 256), 0, 255])[:3])
    outline = tuple(255 - v for v in colour)

    def polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        cos, sin = math.cos(rotation), math.sin(rotation)
        return [
            (cx + radius * (px * cos - py * sin), cy + radius * (px * sin + py * cos))
            for px, py in points
        ]

    width = max(1, round(radius / 8))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    name = SHAPES[shape]
    if name == "disc":
        draw.ellipse(box, fill=colour, outline=outline, width=width)
    elif name == "square":
        draw.polygon(
            polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
            fill=colour,
            outline=outline,
            width=width,
        )
    elif name == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        draw.polygon(polygon(corners), fill=colour, outline=outline, width=width)
    elif name == "cross":
        t = 0.3
        arm = [
            (-1, -t),
            (-t, -t),
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
        ]
        draw.polygon(polygon(arm), fill=colour, outline=outline, width=width)
    else:  # ring
        draw.ellipse(box, outline=colour, width=max(2, round(radius / 3)))
    return img


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of ``img``; sources hand encoded images downstream, like files would."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_image_folder(
    dst: str,
    count: int,
    width: int = 500,
    height: int = 375,
    seed: int = 0,
    num_classes: int = 10,
    quality: int = 90,
) -> None:
    """Save ``count`` synthetic images as JPEG files in an ImageNet-style folder under ``dst``.

    The default 500×375 px at quality 90 is close to an average ImageNet photo, which makes the
    folder a stand-in for real data in converter and throughput benchmarks.
    """
    root = Path(dst)
    for c in range(num_classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = synthetic_image(i, seed, max(width, height), num_classes).resize((width, height))
        img.save(
            root / f"class_{synthetic_label(i, num_classes):02d}" / f"{i:07d}.jpg", quality=quality
        )
