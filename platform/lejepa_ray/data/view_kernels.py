"""The pixels of one view by vectorized kernels: ``data.views.kernels: fast``, the default.

The same operations as the reference (``views.render``, PIL's kernels, byte-equal to
torchvision's pipeline), in the same order, with the same drawn parameters. Only the kernels
change, each picked for being several times cheaper on one core while staying close to the
reference: a mean difference under a level per op, 99th percentiles of 1–3 levels (5 for the
largest hue shifts); ``tests/unit/test_view_kernels.py`` holds the tolerances, ``docs/data.md`` the
table:

- **crop + resize**: torch's uint8 antialiased bilinear resize on a channels-last crop, an
  AVX2 kernel written to reproduce PIL's ``BILINEAR`` filter: within 1 level of it;
- **brightness, contrast**: per-value tables of PIL's blend arithmetic, applied by ``cv2.LUT``;
  a brightness next to a contrast joins its table;
- **saturation**: the blend with the grayscale copy as one colour matrix (``cv2.transform``);
- **hue**: the HSV round trip in float32. PIL rounds H, S and V to 8 bits on the way, so the
  reference is the less exact of the two; they differ by half a level on average;
- **grayscale**: OpenCV's ITU-R 601-2 luma, PIL's weights;
- **blur**: a true Gaussian of the drawn σ (separable, to ±3σ, edges replicated); PIL
  approximates it by three box blurs;
- **solarize**: ``cv2.LUT``.

Views are made in HWC (OpenCV's layout) and transposed once, into the output.

A kernel set (``kernel_sets.ViewKernels``): :func:`prepare` once per sample, :func:`render`
once per view. OpenCV is imported by this module alone, and ``kernel_sets`` loads it only for
``kernels=fast``: the Ray-free parts of the package (device-side views, the GPU check) do not
need it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lejepa_ray.data.view_params import Jitter, OpClock, ViewParams, solarize_table

# A view is made on one core: data tasks scale across cores, one sample at a time, and an
# OpenCV thread pool per task would only oversubscribe them (torch is set to one thread too).
cv2.setNumThreads(1)


def as_tensor(img: Image.Image) -> torch.Tensor:
    """The picture as the uint8 (1, 3, H, W) channels-last tensor that :func:`render` crops."""
    # A copy: PIL's buffer is read-only, and torch tensors must be writable.
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).unsqueeze(0)


prepare = as_tensor
"""The kernel-set interface's name for :func:`as_tensor`."""


def render(
    image: torch.Tensor,
    p: ViewParams,
    size: int,
    solarize_threshold: int,
    out: np.ndarray,
    clock: dict[str, float] | None = None,
    photometric: bool = True,
) -> None:
    """Write the view of ``image`` (from :func:`as_tensor`) with parameters ``p`` into ``out``,
    uint8 (3, size, size); arguments as ``pil_kernels.render``'s."""
    tick = OpClock(clock)
    left, top, right, bottom = p.box
    # Channels-last in and out: the fast uint8 path of the resize, and an HWC result.
    crop = image[:, :, top:bottom, left:right].contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
    view = resized[0].permute(1, 2, 0).numpy()  # (size, size, 3), no copy
    tick("crop_resize")
    if not photometric:
        out[...] = view.transpose(2, 0, 1)
        tick("copy")
        return
    if p.jitter is not None:
        view = color_jitter(view, p.jitter)
        tick("jitter")
    if p.grayscale:
        view = cv2.cvtColor(cv2.cvtColor(view, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        tick("grayscale")
    if p.blur_sigma is not None:
        view = cv2.GaussianBlur(view, (0, 0), p.blur_sigma, borderType=cv2.BORDER_REPLICATE)
        tick("blur")
    if p.solarize:
        view = cv2.LUT(view, solarize_table(solarize_threshold))
        tick("solarize")
    out[...] = (view[:, ::-1] if p.flip else view).transpose(2, 0, 1)
    tick("flip_copy")


def color_jitter(view: np.ndarray, j: Jitter) -> np.ndarray:
    """Colour jitter with drawn parameters ``j`` on an RGB view (H, W, 3) uint8, in ``j``'s
    op order; returns a new (H, W, 3) uint8 array (``view`` is not written)."""
    lut = None  # (256,) uint8: a per-value map not applied yet
    for op in j.order:
        if op == 0 and j.brightness is not None:
            lut = _then(lut, blend_table(0, j.brightness))
        elif op == 1 and j.contrast is not None:
            # Blends with the mean grey of the view as it is now, rounded as PIL's ImageStat.
            view, lut = _apply(view, lut), None
            mean = int(cv2.mean(cv2.cvtColor(view, cv2.COLOR_RGB2GRAY))[0] + 0.5)
            lut = blend_table(mean, j.contrast)
        elif op == 2 and j.saturation is not None:
            view, lut = _apply(view, lut), None
            view = cv2.transform(view, saturation_matrix(j.saturation))
        elif op == 3 and j.hue is not None:
            view, lut = _apply(view, lut), None
            view = shift_hue(view, j.hue)
    return _apply(view, lut)


def saturation_matrix(factor: float) -> np.ndarray:
    """The (3, 3) colour matrix of a saturation blend, ``factor·x + (1 - factor)·luma(x)``,
    for ``cv2.transform``: one pass, where PIL makes the grey copy and then blends."""
    return factor * np.eye(3) + (1.0 - factor) * np.tile(_LUMA, (3, 1))


_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, PIL's "L"


def shift_hue(view: np.ndarray, hue: float) -> np.ndarray:
    """The hue of an RGB view (H, W, 3) uint8 turned by ``hue`` turns, rounded toward zero to
    whole 255ths of a turn, as torchvision's PIL kernel shifts its 8-bit hue."""
    steps = int(np.int32(hue * 255)) % 255  # PIL's H has 255 steps per turn
    hsv: np.ndarray = cv2.cvtColor(view.astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
    h = hsv[..., 0]
    h += steps * (360.0 / 255.0)
    h[h >= 360.0] -= 360.0
    # Back on the input's 0..255 scale; values are >= 0, so the saturating absolute value is
    # the rounding to uint8, in one pass.
    return cv2.convertScaleAbs(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def blend_table(base: int, alpha: float) -> np.ndarray:
    """PIL's ``Image.blend`` of the constant ``base`` with every 8-bit value v, as a table
    (256,) uint8: ``base + alpha·(v - base)`` in float32, clipped and truncated (PIL's kernel
    arithmetic, computed in NumPy: a fifth of the cost of asking PIL, within a level of it)."""
    values = np.float32(base) + np.float32(alpha) * (_RAMP - np.float32(base))
    return np.clip(values, 0, 255).astype(np.uint8)


_RAMP = np.arange(256, dtype=np.float32)


def _then(lut: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """The table (256,) that applies ``lut`` and then ``values`` (256,)."""
    return values if lut is None else values[lut]


def _apply(view: np.ndarray, lut: np.ndarray | None) -> np.ndarray:
    return view if lut is None else cv2.LUT(view, lut)
