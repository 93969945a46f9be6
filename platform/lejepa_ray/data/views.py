"""One image to its LeJEPA views: ``V_g`` global and ``V_l`` local augmented crops, as uint8.

The randomness of every crop comes from a seed derived from (seed, epoch, sample key), so the
views of a sample are the same whichever worker makes them, in whatever order, on any rerun,
and differ from one epoch to the next. Normalisation is left to the training device: shipping
uint8 is four times less data than float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from lejepa_ray.data.config import ViewConfig
from lejepa_ray.data.decode import DEFAULT_MAX_PIXELS, BadImage, SkipCounts, decode_rgb
from lejepa_ray.data.keys import stable_hash


class PILGaussianBlur(v2.Transform):
    """Gaussian blur with σ drawn uniformly from ``sigma``, computed by PIL's C kernel.

    torchvision's blur converts a PIL image to a tensor and runs a float convolution, which on
    CPU costs more than all the other augmentations together; PIL's blur (as in the DINO recipe
    LeJEPA follows) is several times cheaper. Images only: this is not a tensor transform.
    """

    _transformed_types = (Image.Image,)

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def make_params(self, flat_inputs: list) -> dict:
        return {"sigma": torch.empty(1).uniform_(*self.sigma).item()}

    def transform(self, inpt: Image.Image, params: dict) -> Image.Image:
        return inpt.filter(ImageFilter.GaussianBlur(radius=params["sigma"]))


def _augmentation(cfg: ViewConfig, size: int, scale: tuple[float, float]) -> v2.Compose:
    # Order and operations of the LeJEPA recipe; torchvision dispatches them to PIL's C kernels.
    # Operations that can never fire are left out: on small images the per-call overhead of a
    # transform costs as much as its work.
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(cfg.ratio), antialias=True)
    ]
    if cfg.jitter_p > 0 and any(cfg.jitter):
        steps.append(v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=cfg.grayscale_p))
    if cfg.blur_p > 0:
        steps.append(v2.RandomApply([PILGaussianBlur(cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=cfg.solarize_threshold, p=cfg.solarize_p))
    if cfg.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.flip_p))
    return v2.Compose(steps)


class ViewMaker:
    """Makes the views of encoded images; the same object serves Ray Data actors and DataLoaders.

    Args:
        cfg: view counts, sizes and augmentation strengths.
        seed: base seed; with the epoch and the sample key it fixes every random choice.
        max_pixels: images with more pixels are skipped (``too_large``).
    """

    def __init__(self, cfg: ViewConfig, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.cfg = cfg
        self.seed = seed
        self.max_pixels = max_pixels
        self._global = _augmentation(cfg, cfg.global_size, cfg.global_scale)
        self._local = _augmentation(cfg, cfg.local_size, cfg.local_scale)

    def views_of(self, img: Image.Image, key: str, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of a decoded RGB image.

        Returns:
            ``global`` uint8 of shape (V_g, 3, global_size, global_size) and ``local`` uint8 of
            shape (V_l, 3, local_size, local_size).
        """
        c = self.cfg
        glob = np.empty((c.global_views, 3, c.global_size, c.global_size), dtype=np.uint8)
        loc = np.empty((c.local_views, 3, c.local_size, c.local_size), dtype=np.uint8)
        self._fill(img, key, epoch, glob, loc)
        return glob, loc

    def batch(
        self, images: Sequence[bytes | None], keys: Sequence[str], epoch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, SkipCounts]:
        """Views of a batch of encoded images; undecodable ones are skipped and counted.

        Returns:
            ``kept`` int64 indices (K,) of the images that made it, ``global`` uint8
            (K, V_g, 3, S_g, S_g), ``local`` uint8 (K, V_l, 3, S_l, S_l), and the skip counts.
        """
        c = self.cfg
        n = len(images)
        glob = np.empty((n, c.global_views, 3, c.global_size, c.global_size), dtype=np.uint8)
        loc = np.empty((n, c.local_views, 3, c.local_size, c.local_size), dtype=np.uint8)
        kept: list[int] = []
        skipped = SkipCounts()
        for i, (data, key) in enumerate(zip(images, keys, strict=True)):
            try:
                img = decode_rgb(data, self.max_pixels)
            except BadImage as e:
                skipped[e.reason] += 1
                continue
            self._fill(img, key, epoch, glob[len(kept)], loc[len(kept)])
            kept.append(i)
        k = len(kept)
        return np.asarray(kept, dtype=np.int64), glob[:k], loc[:k], skipped

    def _fill(self, img: Image.Image, key: str, epoch: int, glob: np.ndarray, loc: np.ndarray):
        # torchvision's random transforms draw from torch's global generator; seeding it per
        # sample is what makes the views independent of which worker made them and when.
        torch.manual_seed(stable_hash(self.seed, epoch, key))
        for out in glob:
            out[...] = np.asarray(self._global(img)).transpose(2, 0, 1)
        for out in loc:
            out[...] = np.asarray(self._local(img)).transpose(2, 0, 1)
