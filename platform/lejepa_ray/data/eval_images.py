"""Images for evaluation: a source's images decoded, resized and centre-cropped, without
augmentation, read into this process (the probes' and RankMe's held-out sets)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.decode import BadImage, decode_rgb
from lejepa_ray.data.sources import LocalSource
from lejepa_ray.errors import ConfigError


def read_images(
    data: DataConfig, size: int, max_samples: int, labelled: bool = True
) -> tuple[list[torch.Tensor], list[int | None], list[str]]:
    """Up to ``max_samples`` decodable uint8 images (3, S, S) of ``data``'s source (its
    ``split``), resized (short side) and centre-cropped to ``size``, spread evenly (parquet:
    the first rows, which the converter already mixed), with labels and keys. ``labelled``:
    only images with a label; otherwise every decodable one (labels may be None)."""
    limit = min(data.num_samples or max_samples, max_samples)
    # LocalSource reads into this process: never more than the probe needs.
    source = LocalSource(dataclasses.replace(data, num_samples=limit))
    if len(source) == 0:
        raise ConfigError(f"data.source={data.source} has no images to probe with.")
    picks = np.unique(np.linspace(0, len(source) - 1, min(max_samples, len(source))).astype(int))
    images, labels, keys = [], [], []
    for i in picks:
        row = source[int(i)]
        unlabelled = row["label"] is None or row["label"] < 0
        if labelled and unlabelled:
            continue
        try:
            img = decode_rgb(row["image"], data.max_pixels)
        except BadImage:
            continue
        images.append(prepare_image(img, size))
        labels.append(None if unlabelled else int(row["label"]))
        keys.append(row["key"])
    return images, labels, keys


def prepare_image(img: Image.Image, size: int) -> torch.Tensor:
    """An RGB image as evaluation (``eval``, ``embed``) sees it: uint8 (3, size, size), the
    short side resized to ``size`` (bilinear, antialiased), then centre-cropped."""
    return _preparation(size)(img)


@functools.cache
def _preparation(size: int) -> v2.Compose:
    return v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
