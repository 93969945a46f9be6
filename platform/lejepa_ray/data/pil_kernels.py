"""The pixels of one view by PIL's kernels: ``data.views.kernels: pil``, the reference.

For the same drawn :class:`~.view_params.ViewParams` these are the bytes of torchvision's v2
pipeline (tested), in fewer passes than its per-transform dispatch makes. Brightness and
contrast are per-value maps, applied as lookup tables that PIL's own blend computes on a
256-value ramp (a brightness next to a contrast joins its table); saturation is
``ImageEnhance.Color``'s blend without its wrapper; hue is torchvision's HSV round trip with
the shift as one LUT; solarize is a LUT and the flip a reversed copy into the output.

A kernel set (``kernel_sets.ViewKernels``): :func:`prepare` once per sample, :func:`render`
once per view.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageFilter, ImageStat

from lejepa_ray.data.view_params import Jitter, OpClock, ViewParams, solarize_table

_RAMP = Image.frombytes("L", (256, 1), bytes(range(256)))  # every 8-bit value once


def prepare(img: Image.Image) -> Image.Image:
    """The decoded RGB picture as :func:`render` crops it: as it is."""
    return img


def render(
    img: Image.Image,
    p: ViewParams,
    size: int,
    solarize_threshold: int,
    out: np.ndarray,
    clock: dict[str, float] | None = None,
    photometric: bool = True,
) -> None:
    """Write the view of ``img`` with parameters ``p`` into ``out``, uint8 (3, size, size).
    ``clock``, when given, accumulates the seconds of each operation under its name. With
    ``photometric=False`` only the crop is made (no jitter, grayscale, blur, solarize or
    flip: those are left to the training device)."""
    tick = OpClock(clock)
    view = img.crop(p.box).resize((size, size), Image.Resampling.BILINEAR)
    tick("crop_resize")
    if not photometric:
        out[...] = np.asarray(view).transpose(2, 0, 1)
        tick("copy")
        return
    if p.jitter is not None:
        view = color_jitter(view, p.jitter)
        tick("jitter")
    if p.grayscale:
        view = view.convert("L").convert("RGB")
        tick("grayscale")
    if p.blur_sigma is not None:
        view = view.filter(ImageFilter.GaussianBlur(radius=p.blur_sigma))
        tick("blur")
    if p.solarize:
        view = view.point(_solarize_lut(solarize_threshold))
        tick("solarize")
    pixels = np.asarray(view)
    out[...] = (pixels[:, ::-1] if p.flip else pixels).transpose(2, 0, 1)
    tick("flip_copy")


def color_jitter(img: Image.Image, j: Jitter) -> Image.Image:
    """torchvision's ``ColorJitter`` on a PIL RGB image with the drawn parameters ``j``: the
    same arithmetic as its PIL kernels (``ImageEnhance``), in fewer passes."""
    lut = None  # (3, 256) uint8: per-value maps not applied yet
    for op in j.order:
        if op == 0 and j.brightness is not None:
            lut = _then(lut, _blend(0, j.brightness))
        elif op == 1 and j.contrast is not None:
            # ImageEnhance.Contrast blends with the image's mean grey, rounded to an integer.
            img, lut = _apply(img, lut), None
            mean = int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)
            lut = _then(None, _blend(mean, j.contrast))
        elif op == 2 and j.saturation is not None:
            img, lut = _apply(img, lut), None
            img = Image.blend(img.convert("L").convert("RGB"), img, j.saturation)
        elif op == 3 and j.hue is not None:
            img, lut = _apply(img, lut), None
            img = _shift_hue(img, j.hue)
    return _apply(img, lut)


def _blend(base: int, alpha: float) -> np.ndarray:
    """PIL's ``Image.blend(base, v, alpha)`` for every value v (256,) uint8, computed by PIL's
    own blend on a 256-pixel ramp, so its float rounding is the kernel's, on any machine."""
    flat = Image.new("L", (256, 1), base)
    return np.asarray(Image.blend(flat, _RAMP, alpha))[0]


def _then(lut: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """The LUT (3, 256) that applies ``lut`` and then the per-value map ``values`` (256,)."""
    return np.tile(values, (3, 1)) if lut is None else values[lut]


def _apply(img: Image.Image, lut: np.ndarray | None) -> Image.Image:
    return img if lut is None else img.point(lut.ravel().tolist())


def _shift_hue(img: Image.Image, hue: float) -> Image.Image:
    """torchvision's ``adjust_hue`` on PIL: the hue channel, in HSV, shifted by ``hue`` turns
    as an 8-bit wraparound (one LUT pass on the HSV image, where torchvision splits it)."""
    shift = int(np.int32(hue * 255).astype(np.uint8))
    lut = [(i + shift) % 256 for i in range(256)] + _IDENTITY2
    return img.convert("HSV").point(lut).convert("RGB")


_IDENTITY2 = list(range(256)) * 2


@functools.cache
def _solarize_lut(threshold: int) -> list[int]:
    return solarize_table(threshold).tolist() * 3
