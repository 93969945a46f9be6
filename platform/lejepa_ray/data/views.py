"""One image to its LeJEPA views: ``V_g`` global and ``V_l`` local augmented crops, as uint8.

The randomness of every crop comes from a seed derived from (seed, epoch, sample key), so the
views of a sample are the same whichever worker makes them, in whatever order, on any rerun,
and differ from one epoch to the next. Normalisation is left to the training device: shipping
uint8 is four times less data than float32.

The recipe is torchvision's (the LeJEPA/DINO one): ``RandomResizedCrop``, colour jitter applied
with probability ``jitter_p``, grayscale, Gaussian blur, solarize, horizontal flip. The random
parameters are drawn as torchvision's own ``make_params`` draws them, call for call on torch's
generator, in the order ``v2.Compose`` draws them, so they are torchvision's (tested).

The pixels are made from those parameters by the kernel set ``data.views.kernels`` names
(``kernel_sets.KERNELS``):

- ``fast`` (the default), ``lejepa_ray.data.view_kernels``: torch's uint8 resize and OpenCV,
  3.3–3.9× cheaper than torchvision per sample, a mean 0.65 levels from the
  reference on whole views (99th percentile 4; tolerances per op in ``docs/data.md``);
- ``pil``, ``lejepa_ray.data.pil_kernels``, the reference: PIL's kernels, the bytes of
  torchvision's pipeline for the same seed (tested).

With ``photometric=False`` (``data.augment_on=device``) only the crops are made here: the
parameters of every view are drawn all the same, from the same seeded generator, and shipped
beside the uint8 crops as a float32 row (:meth:`ViewParams.encode`, layout ``PARAM_FIELDS``),
for ``lejepa_ray.data.device_views`` to apply on the training device.

The parameter types (``view_params``) and the reference kernels :func:`render` and
:func:`color_jitter` (``pil_kernels``) are re-exported here, where callers have known them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.decode import DEFAULT_MAX_PIXELS, BadImage, SkipCounts, decode_rgb
from lejepa_ray.data.kernel_sets import kernels, photometric_in_data
from lejepa_ray.data.keys import stable_hash
from lejepa_ray.data.pil_kernels import color_jitter, render
from lejepa_ray.data.view_params import PARAM_FIELDS, Jitter, OpClock, ViewParams

__all__ = [
    "PARAM_FIELDS",
    "Jitter",
    "ViewBatch",
    "ViewMaker",
    "ViewParams",
    "color_jitter",
    "render",
]


class ViewBatch(NamedTuple):
    """The views of a batch of encoded images (:meth:`ViewMaker.batch`)."""

    kept: np.ndarray
    """int64 (K,): indices of the images that decoded."""
    global_views: np.ndarray
    """uint8 (K, V_g, 3, S_g, S_g)."""
    local_views: np.ndarray
    """uint8 (K, V_l, 3, S_l, S_l)."""
    skipped: SkipCounts
    """Images skipped, per reason."""
    global_params: np.ndarray | None = None
    """float32 (K, V_g, len(PARAM_FIELDS)): photometric parameters still to apply; None when
    the maker applied them (``photometric=True``)."""
    local_params: np.ndarray | None = None
    """float32 (K, V_l, len(PARAM_FIELDS)), as ``global_params``."""


class _Recipe:
    """The augmentation of one kind of view (global or local) at one output size.

    The draws are those of torchvision's ``make_params`` (RandomResizedCrop, ColorJitter) and
    ``RandomApply``, call for call on torch's generator, in ``v2.Compose``'s order; only the
    one-element tensors they draw into are reused instead of allocated, which makes the draws
    about 3× cheaper. The ranges come from torchvision's own transform objects. Tested: the
    same seed gives torchvision's parameters and leaves the generator in the same state.

    Not thread-safe: the scratch tensors, like the per-sample seeding of torch's global
    generator, assume one thread makes views in a process (as Ray Data tasks and DataLoader
    workers do)."""

    def __init__(self, cfg: ViewConfig, size: int, scale: tuple[float, float]):
        self.cfg, self.size = cfg, size
        crop = v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(cfg.ratio))
        self.scale, self.ratio = crop.scale, crop.ratio
        # The log-ratio bounds in float32, as RandomResizedCrop keeps and draws them.
        self.log_ratio = torch.log(torch.tensor(self.ratio)).tolist()
        # Operations that can never fire draw nothing, as they were left out of torchvision's
        # Compose before: the same seed keeps giving the same views.
        jitter = v2.ColorJitter(*cfg.jitter) if cfg.jitter_p > 0 and any(cfg.jitter) else None
        self.jitter_ranges = None
        if jitter is not None:
            self.jitter_ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        # torchvision compares a float32 draw with p rounded to float32 (RandomApply's
        # ``torch.rand(1) >= p``); 0 means the op is left out and draws nothing.
        self.p = {
            name: float(np.float32(getattr(cfg, f"{name}_p")))
            for name in ("jitter", "grayscale", "blur", "solarize", "flip")
        }
        self._u = torch.empty(1)  # float32, as torch.empty(1) and torch.rand(1)
        self._k = torch.empty(1, dtype=torch.int64)  # as torch.randint's result

    def draw(self, img: Image.Image) -> ViewParams:
        """The view's parameters, drawn from torch's generator in ``v2.Compose``'s order."""
        box = self._crop(img.height, img.width)
        jitter = None
        if self.jitter_ranges is not None and self._fires("jitter"):
            order = tuple(torch.randperm(4).tolist())
            b, c, s, h = (
                None if r is None else self._u.uniform_(*r).item() for r in self.jitter_ranges
            )
            jitter = Jitter(order, b, c, s, h)
        gray = self._fires("grayscale")
        sigma = self._u.uniform_(*self.cfg.blur_sigma).item() if self._fires("blur") else None
        return ViewParams(box, jitter, gray, sigma, self._fires("solarize"), self._fires("flip"))

    def _fires(self, op: str) -> bool:
        p = self.p[op]
        return p > 0 and self._u.uniform_().item() < p

    def _crop(self, height: int, width: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box (left, top, right, bottom): up to ten tries at an area and
        an aspect ratio that fit, else the central crop of the nearest allowed ratio."""
        area = height * width
        for _ in range(10):
            target = area * self._u.uniform_(*self.scale).item()
            aspect = self._u.uniform_(*self.log_ratio).exp_().item()  # exp in float32
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(self._k.random_(0, height - h + 1).item())  # .item() of int64: an int
                left = int(self._k.random_(0, width - w + 1).item())
                return left, top, left + w, top + h
        ratio = width / height
        if ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif ratio > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h


class ViewMaker:
    """Makes the views of encoded images; the same object serves Ray Data actors and DataLoaders.

    Args:
        cfg: view counts, sizes and augmentation strengths.
        seed: base seed; with the epoch and the sample key it fixes every random choice.
        max_pixels: images with more pixels are skipped (``too_large``).
        photometric: apply the photometric ops here (``data.augment_on=cpu``); False leaves
            them to the training device and :meth:`batch` returns their parameters.
    """

    def __init__(
        self,
        cfg: ViewConfig,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        photometric: bool = True,
    ):
        self.cfg = cfg
        self.seed = seed
        self.max_pixels = max_pixels
        self.photometric = photometric
        self._global = _Recipe(cfg, cfg.global_size, cfg.global_scale)
        self._local = _Recipe(cfg, cfg.local_size, cfg.local_scale)
        # The set's functions, not the set (a module does not pickle): DataLoader workers
        # started by spawn receive the maker pickled.
        k = kernels(cfg.kernels)
        self._prepare, self._render = k.prepare, k.render

    @classmethod
    def of(cls, cfg: DataConfig) -> ViewMaker:
        """The maker a data worker of ``cfg`` uses (its views, seed, size limit and
        ``augment_on``)."""
        return cls(cfg.views, cfg.seed, cfg.max_pixels, photometric=photometric_in_data(cfg))

    def views_of(self, img: Image.Image, key: str, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of a decoded RGB image.

        Returns:
            ``global`` uint8 of shape (V_g, 3, global_size, global_size) and ``local`` uint8 of
            shape (V_l, 3, local_size, local_size).
        """
        glob, loc = self._buffers()
        self._fill(img, key, epoch, glob, loc)
        return glob, loc

    def _buffers(self, *batch: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        return (
            np.empty((*batch, c.global_views, 3, c.global_size, c.global_size), dtype=np.uint8),
            np.empty((*batch, c.local_views, 3, c.local_size, c.local_size), dtype=np.uint8),
        )

    def batch(self, images: Sequence[bytes | None], keys: Sequence[str], epoch: int) -> ViewBatch:
        """Views of a batch of encoded images; undecodable ones are skipped and counted.
        Without ``photometric``, the views are plain crops and their parameters come along."""
        n, c = len(images), self.cfg
        glob, loc = self._buffers(n)
        params = None
        if not self.photometric:
            params = np.empty((n, c.global_views + c.local_views, len(PARAM_FIELDS)), np.float32)
        kept: list[int] = []
        skipped = SkipCounts()
        for i, (data, key) in enumerate(zip(images, keys, strict=True)):
            try:
                img = decode_rgb(data, self.max_pixels)
            except BadImage as e:
                skipped[e.reason] += 1
                continue
            k = len(kept)
            drawn = self._fill(img, key, epoch, glob[k], loc[k])
            if params is not None:
                for row, p in zip(params[k], drawn, strict=True):
                    p.encode(row)
            kept.append(i)
        k = len(kept)
        out = ViewBatch(np.asarray(kept, dtype=np.int64), glob[:k], loc[:k], skipped)
        if params is None:
            return out
        return out._replace(
            global_params=params[:k, : c.global_views], local_params=params[:k, c.global_views :]
        )

    def params(self, img: Image.Image, key: str, epoch: int) -> list[ViewParams]:
        """The parameters of every view of ``img`` (global ones first), as ``views_of`` draws
        them."""
        # The CPU generator only: torch.manual_seed also queues the seeding of every CUDA
        # device, recording a stack trace each time (0.25 ms here, per sample).
        torch.default_generator.manual_seed(stable_hash(self.seed, epoch, key))
        c = self.cfg
        return [self._global.draw(img) for _ in range(c.global_views)] + [
            self._local.draw(img) for _ in range(c.local_views)
        ]

    def _fill(
        self,
        img: Image.Image,
        key: str,
        epoch: int,
        glob: np.ndarray,
        loc: np.ndarray,
        clock: dict[str, float] | None = None,
    ) -> list[ViewParams]:
        # The draws use torch's global generator, seeded per sample: that is what makes the
        # views independent of which worker made them and when.
        tick = OpClock(clock)
        params = self.params(img, key, epoch)
        tick("draw")
        source = self._prepare(img)
        tick("crop_resize")
        c, threshold = self.cfg, self.cfg.solarize_threshold
        colour, draw = self.photometric, self._render
        for out, p in zip(glob, params[: c.global_views], strict=True):
            draw(source, p, c.global_size, threshold, out, clock, colour)
        for out, p in zip(loc, params[c.global_views :], strict=True):
            draw(source, p, c.local_size, threshold, out, clock, colour)
        return params

    def profile(self, img: Image.Image, key: str, epoch: int, clock: dict[str, float]) -> None:
        """Make the views of ``img`` (discarded), adding each operation's seconds to
        ``clock``: ``draw`` (the random parameters), ``crop_resize``, ``jitter``,
        ``grayscale``, ``blur``, ``solarize``, ``flip_copy`` (without ``photometric``:
        ``draw``, ``crop_resize`` and ``copy``)."""
        self._fill(img, key, epoch, *self._buffers(), clock)
