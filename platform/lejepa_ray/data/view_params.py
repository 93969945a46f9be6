"""The random choices of one view, and what every view-kernel set shares to apply them.

:class:`ViewParams` is what ``views`` draws for a view and every kernel set (``pil_kernels``,
``view_kernels``, ``device_views``) reads. With ``data.augment_on=device`` its photometric
part travels from the data tasks to the trainer as a float32 row, laid out as
:data:`PARAM_FIELDS`. :class:`OpClock` times the ops of a kernel set, :func:`solarize_table`
is the solarize map they share.

Only NumPy is imported here: the kernel sets import this module, and it imports none of them.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Jitter:
    """Colour jitter of one view, as torchvision's ``ColorJitter.make_params`` draws it."""

    order: tuple[int, ...]
    """The order of the four operations: 0 brightness, 1 contrast, 2 saturation, 3 hue."""
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None
    """Hue shift in turns, in [-0.5, 0.5]."""


@dataclass(frozen=True)
class ViewParams:
    """Every random choice of one view."""

    box: tuple[int, int, int, int]
    """The crop in source pixels: left, top, right, bottom."""
    jitter: Jitter | None
    grayscale: bool
    blur_sigma: float | None
    """Standard deviation of the Gaussian blur in view pixels; None: no blur."""
    solarize: bool
    flip: bool

    def encode(self, out: np.ndarray) -> None:
        """Write the photometric parameters into ``out`` (len(PARAM_FIELDS),) float32, laid
        out as ``PARAM_FIELDS`` says (the crop box is not needed once the crop is made)."""
        j = self.jitter
        out[:] = 0.0
        if j is not None:
            out[COLUMN["jitter"]] = 1.0
            out[COLUMN["order0"] : COLUMN["order0"] + 4] = j.order
            for i, f in enumerate((j.brightness, j.contrast, j.saturation, j.hue)):
                out[COLUMN["brightness"] + i] = np.nan if f is None else f
        out[COLUMN["grayscale"]] = self.grayscale
        out[COLUMN["blur_sigma"]] = self.blur_sigma or 0.0
        out[COLUMN["solarize"]] = self.solarize
        out[COLUMN["flip"]] = self.flip


PARAM_FIELDS = (
    "jitter",  # 1: colour jitter applies to this view
    "order0", "order1", "order2", "order3",  # the jitter's op order, Jitter.order
    "brightness", "contrast", "saturation", "hue",  # its factors; NaN: that op is off
    "grayscale",  # 1: to grayscale
    "blur_sigma",  # σ in view pixels; 0: no blur
    "solarize",  # 1: solarize
    "flip",  # 1: horizontal flip
)  # fmt: skip
"""The columns of an encoded view's parameters (float32), in order."""
COLUMN = {name: i for i, name in enumerate(PARAM_FIELDS)}
"""Index of each of ``PARAM_FIELDS`` in an encoded row."""


class OpClock:
    """Adds the time since the last call to ``clock[name]`` (seconds); does nothing without a
    clock."""

    def __init__(self, clock: dict[str, float] | None):
        self.clock = clock
        self.last = time.perf_counter() if clock is not None else 0.0

    def __call__(self, name: str) -> None:
        if self.clock is not None:
            now = time.perf_counter()
            self.clock[name] = self.clock.get(name, 0.0) + now - self.last
            self.last = now


@functools.cache
def solarize_table(threshold: int) -> np.ndarray:
    """Solarization as a per-value map (256,) uint8: values at or above ``threshold`` inverted."""
    values = np.arange(256, dtype=np.uint8)
    return np.where(values < threshold, values, 255 - values).astype(np.uint8)
