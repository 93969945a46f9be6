"""The generated sources, which need no ``data.path``: ``synthetic`` (coloured shapes on
textured backgrounds, drawn by ``data.synthetic``, with their true foreground masks) and
``digits`` (scikit-learn's bundled 1,797 8×8 digits, upsampled).

Both render at ``data.image_size`` px, one piece per sample, keyed ``<source>/<id>``.
Synthetic makes ``data.num_samples`` ids (10,000 by default) and its split keeps its share;
digits splits its 1,797 and keeps at most ``data.num_samples`` of the split.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image

from lejepa_ray.data.keys import in_split
from lejepa_ray.data.source import IndexedSource, Row, register_source
from lejepa_ray.data.synthetic import (
    encode_jpeg,
    synthetic_image,
    synthetic_label,
    synthetic_mask,
)

if TYPE_CHECKING:
    from lejepa_ray.data.config import DataConfig

DEFAULT_SYNTHETIC_SAMPLES = 10_000
DIGITS_CLASSES = [str(d) for d in range(10)]
DIGITS_COUNT = 1797


@register_source("synthetic")
class SyntheticSource(IndexedSource):
    """Generated shapes: ``data.num_classes`` classes, seeded by ``data.seed``."""

    generated = True
    num_samples_before_split = True
    has_true_masks = True

    def size(self, cfg: DataConfig) -> int:
        return len(_synthetic_ids(cfg.num_samples, cfg.split))

    def row(self, cfg: DataConfig, i: int) -> Row:
        n = int(_synthetic_ids(cfg.num_samples, cfg.split)[i])
        return {
            "image": encode_jpeg(synthetic_image(n, cfg.seed, cfg.image_size, cfg.num_classes)),
            "label": synthetic_label(n, cfg.num_classes),
            "key": f"synthetic/{n}",
        }

    def class_names(self, cfg: DataConfig) -> list[str]:
        return [f"class_{c}" for c in range(cfg.num_classes)]

    def true_masks(self, cfg: DataConfig, keys: Sequence[str]) -> np.ndarray:
        """bool (N, S, S), S = ``data.image_size``: the shape of each ``synthetic/<id>``."""
        ids = [int(k.rsplit("/", 1)[1]) for k in keys]
        return np.stack([synthetic_mask(i, cfg.seed, cfg.image_size, cfg.num_classes) for i in ids])


@register_source("digits")
class DigitsSource(IndexedSource):
    """scikit-learn's digits, ink on white paper, ten classes ``0``..``9``."""

    generated = True

    def size(self, cfg: DataConfig) -> int:
        return len(_digits_ids(cfg.num_samples, cfg.split))

    def row(self, cfg: DataConfig, i: int) -> Row:
        n = int(_digits_ids(cfg.num_samples, cfg.split)[i])
        table = _digits_table(cfg.image_size)
        return {c: table.column(c)[n].as_py() for c in ("image", "label", "key")}

    def class_names(self, cfg: DataConfig) -> list[str]:
        return list(DIGITS_CLASSES)


@functools.lru_cache(maxsize=8)
def _synthetic_ids(num_samples: int | None, split: str) -> np.ndarray:
    """Ids (int64) of the synthetic samples in ``split``: ``num_samples`` generated, then
    split."""
    total = num_samples or DEFAULT_SYNTHETIC_SAMPLES
    return np.array([i for i in range(total) if in_split(f"synthetic/{i}", split)], np.int64)


@functools.lru_cache(maxsize=8)
def _digits_ids(num_samples: int | None, split: str) -> np.ndarray:
    """Ids (int64) of the digits in ``split``: the 1,797 split, then at most ``num_samples``."""
    ids = np.array([i for i in range(DIGITS_COUNT) if in_split(f"digits/{i}", split)], np.int64)
    return ids[:num_samples]


@functools.lru_cache(maxsize=4)
def _digits_table(size: int) -> pa.Table:
    """scikit-learn's 1,797 bundled 8×8 digits, upsampled to ``size`` px, as PNG rows."""
    # lazy: scikit-learn takes about a second to import; only the digits source needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Intensities are 0..16 ink on white paper; invert so digits look like ink on paper.
    pixels = (255 - np.clip(digits.images * 16, 0, 255)).astype(np.uint8)
    images = []
    for p in pixels:
        buffer = io.BytesIO()
        Image.fromarray(p, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(
            buffer, format="PNG"
        )
        images.append(buffer.getvalue())
    return pa.table(
        {
            "image": pa.array(images, pa.binary()),
            "label": pa.array(digits.target.astype(np.int64)),
            "key": pa.array([f"digits/{i}" for i in range(len(images))], pa.string()),
        }
    )
