"""Procedurally generated images whose class is recoverable from what they show.

Class ``c`` is a shape (``c % 5``: disc, square, triangle, cross, ring) drawn over a striped
background (``c // 5``: four stripe angles times two stripe periods). Colours, position, size,
rotation and stripe phase are random nuisances. Image ``i`` is a pure function of
(seed, i, size, num_classes), so any count can be generated anywhere without storing it, and
so is its foreground mask (:func:`synthetic_mask`, drawn by the same code as the shape): the
ground truth ``lejepa-ray visualize --iou`` scores attention masks against.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "cross", "ring")
MAX_CLASSES = len(SHAPES) * 8


def synthetic_label(index: int, num_classes: int) -> int:
    """Class of image ``index``: classes are balanced by construction."""
    return index % num_classes


@dataclass(frozen=True)
class _Scene:
    """Everything image ``index`` is drawn from: its random draws, made in one fixed order (the
    order the pixels have always been generated in, so that no image changes)."""

    size: int
    shape: str
    stripes: np.ndarray
    """bool (size, size): True where the background takes the dark colour."""
    dark: np.ndarray
    light: np.ndarray
    radius: float
    cx: float
    cy: float
    rotation: float
    colour: tuple[int, ...]


def _scene(index: int, seed: int, size: int, num_classes: int) -> _Scene:
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

    # Foreground: one shape with a colour far from both stripe colours.
    radius = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(radius, size - radius, 2)
    rotation = rng.uniform(0, 2 * math.pi)
    colour = tuple(int(v) for v in rng.permutation([int(rng.integers(200, 256)), 0, 255])[:3])
    return _Scene(size, SHAPES[shape], stripes, dark, light, radius, cx, cy, rotation, colour)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    s: _Scene,
    fill: tuple[int, ...] | int,
    outline: tuple[int, ...] | int,
) -> None:
    """Draw the scene's shape, its body in ``fill`` and its outline in ``outline``: the one
    drawing path of both the image and its mask, so that the two cannot drift apart."""

    def polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        cos, sin = math.cos(s.rotation), math.sin(s.rotation)
        return [
            (s.cx + s.radius * (px * cos - py * sin), s.cy + s.radius * (px * sin + py * cos))
            for px, py in points
        ]

    width = max(1, round(s.radius / 8))
    box = (s.cx - s.radius, s.cy - s.radius, s.cx + s.radius, s.cy + s.radius)
    if s.shape == "disc":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif s.shape == "square":
        draw.polygon(
            polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
            fill=fill,
            outline=outline,
            width=width,
        )
    elif s.shape == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        draw.polygon(polygon(corners), fill=fill, outline=outline, width=width)
    elif s.shape == "cross":
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
        draw.polygon(polygon(arm), fill=fill, outline=outline, width=width)
    else:  # ring: the band is the shape, its inside is background
        draw.ellipse(box, outline=fill, width=max(2, round(s.radius / 3)))


def synthetic_image(index: int, seed: int, size: int, num_classes: int) -> Image.Image:
    """The RGB image number ``index`` of the synthetic dataset, ``size`` × ``size`` pixels."""
    s = _scene(index, seed, size, num_classes)
    pixels = np.where(s.stripes[..., None], s.dark, s.light).astype(np.uint8)
    img = Image.fromarray(pixels, mode="RGB")
    _draw_shape(ImageDraw.Draw(img), s, s.colour, tuple(255 - v for v in s.colour))
    return img


def synthetic_mask(index: int, seed: int, size: int, num_classes: int) -> np.ndarray:
    """The foreground of :func:`synthetic_image` (same arguments): bool (size, size), True on
    every pixel its shape covers (body and outline; a ring's band, not its inside)."""
    s = _scene(index, seed, size, num_classes)
    canvas = Image.new("L", (size, size), 0)
    # Two inks, as the image's body and outline colours always differ: PIL skips an outline in
    # the fill's ink, and a 1 px polygon outline reaches pixels past the fill.
    _draw_shape(ImageDraw.Draw(canvas), s, 1, 2)
    return np.asarray(canvas) > 0


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
