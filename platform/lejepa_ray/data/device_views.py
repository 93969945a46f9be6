"""The photometric half of the views, as batched tensor ops on the training device.

With ``data.augment_on=device`` the data actors decode and crop only (uint8), and every view's
random parameters travel beside it as a float32 row (``view_params.PARAM_FIELDS``). They are
drawn in the actors by the same code and the same per-sample seeded generator as on the CPU
path, so a run is as reproducible, and the parameter distributions are the CPU path's by
construction. Here, on the trainer's device (CPU tensors in the tests, CUDA in production),
the ops run on a whole batch of views at once, in the CPU path's order:

    colour jitter (brightness, contrast, saturation, hue, in each view's own drawn order)
    -> grayscale -> Gaussian blur -> solarize -> horizontal flip

The arithmetic is torchvision's tensor kernels', in float32 on the 0-255 scale:

- brightness ``x·f``; contrast ``f·x + (1-f)·mean(gray(x))``; saturation ``f·x + (1-f)·gray(x)``,
  each clamped to [0, 255]; ``gray`` is ITU-R 601 luma (0.299, 0.587, 0.114), as PIL's ``L``;
- hue: RGB -> HSV, the hue turned by ``h`` turns, HSV -> RGB;
- blur: a separable Gaussian of the drawn σ (in view pixels), truncated at 3·σ_max, with edge
  pixels repeated (PIL's box-blur approximation of the same Gaussian repeats them too);
- solarize: values at or above the threshold become ``255 - x``.

The one deliberate difference from the CPU path is rounding: PIL rounds to uint8 after every
op, this path keeps float32 until the model normalizes (the result is float32 on the 0-255
scale, which the encoder takes as it takes uint8). Per op, the two agree within a few levels
(tests/unit/test_device_views.py states the tolerances).

The trainer gets :func:`augment_batch`, bound to the view recipe, as its device step from
``kernel_sets.device_augment`` (the ``device`` entry of ``kernel_sets.DEVICE_STEPS``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lejepa_ray.data.config import ViewConfig
from lejepa_ray.data.view_params import COLUMN, PARAM_FIELDS

_LUMA = (0.299, 0.587, 0.114)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of RGB images ``x`` (N, 3, H, W)."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _per(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``x`` (n, 3, H, W) on the 0-255 scale, scaled by ``f`` (n,)."""
    return (x * _per(f)).clamp_(0, 255)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``x`` (n, 3, H, W) blended with its mean luma, weight ``f`` (n,) on the image."""
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return (_per(f) * x + (1 - _per(f)) * mean).clamp_(0, 255)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``x`` (n, 3, H, W) blended with its own luma, weight ``f`` (n,) on the image."""
    return (_per(f) * x + (1 - _per(f)) * gray(x)).clamp_(0, 255)


def hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x`` (n, 3, H, W) on the 0-255 scale with its hue turned by ``h`` (n,) turns."""
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    r, g, b = x.unbind(1)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hh = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe)
    )
    hh = torch.where(delta > 0, hh / 6, torch.zeros_like(hh))
    hh = torch.remainder(hh + h.view(-1, 1, 1), 1.0)
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), maxc)
    # HSV -> RGB without branches: channel c is v - v·s·clamp(min(k, 4 - k), 0, 1),
    # k = (n_c + 6·hue) mod 6 with n = 5, 3, 1 for r, g, b.
    h6 = hh * 6
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h6, 6.0)
        out.append(maxc - maxc * s * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(out, 1)


def blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """``x`` (n, 3, H, W) convolved with a Gaussian of standard deviation ``sigma`` (n,)
    pixels, each image its own. The kernel spans ±ceil(3·``max_sigma``) (the same for every
    image, so there is no host sync; smaller σ just have near-zero tails)."""
    n, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * max_sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c, 2r + 1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


_JITTER_OPS = (brightness, contrast, saturation, hue)


def augment(views: torch.Tensor, params: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
    """The photometric ops of ``params`` applied to ``views``.

    Args:
        views: (N, 3, S, S) uint8 (or float on the 0-255 scale) crops.
        params: (N, len(PARAM_FIELDS)) float32, one row per view (``ViewParams.encode``).
        cfg: the view recipe (the solarize threshold and the largest blur σ).

    Returns:
        (N, 3, S, S) float32 on the 0-255 scale.
    """
    if params.shape != (views.shape[0], len(PARAM_FIELDS)):
        raise ValueError(
            f"augment: params of shape {tuple(params.shape)} for {views.shape[0]} views; "
            f"expected ({views.shape[0]}, {len(PARAM_FIELDS)})"
        )
    # A copy even of float32 views: the ops below write into x, and a batch on the CPU may be
    # read-only memory of Ray's object store.
    x = views.to(torch.float32, copy=True)
    params = params.to(x.device, torch.float32)
    jitter = params[:, COLUMN["jitter"]] > 0
    if bool(jitter.any()):
        # Each view applies the four ops in its own drawn order: at position i, every view
        # whose i-th op is k gets op k, on just those views.
        for i in range(4):
            op = params[:, COLUMN["order0"] + i]
            for k, fn in enumerate(_JITTER_OPS):
                factor = params[:, COLUMN["brightness"] + k]
                idx = (jitter & (op == k) & ~factor.isnan()).nonzero().squeeze(1)
                if idx.numel():
                    x[idx] = fn(x[idx], factor[idx])
    x = torch.where(_per(params[:, COLUMN["grayscale"]] > 0), gray(x).expand_as(x), x)
    idx = (params[:, COLUMN["blur_sigma"]] > 0).nonzero().squeeze(1)
    if idx.numel():
        x[idx] = blur(x[idx], params[idx, COLUMN["blur_sigma"]], cfg.blur_sigma[1])
    solar = _per(params[:, COLUMN["solarize"]] > 0) & (x >= cfg.solarize_threshold)
    x = torch.where(solar, 255 - x, x)
    return torch.where(_per(params[:, COLUMN["flip"]] > 0), x.flip(-1), x)


def augment_batch(batch: dict[str, torch.Tensor], cfg: ViewConfig) -> dict[str, torch.Tensor]:
    """A batch of the views stream with its photometric parameters applied: ``global``
    (B, V_g, 3, S_g, S_g) and ``local`` (B, V_l, 3, S_l, S_l) become float32 on the 0-255
    scale, and ``global_params``/``local_params`` (B, V, P) are consumed. A batch without
    parameters (``data.augment_on=cpu``) is returned as it is."""
    if "global_params" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if not k.endswith("_params")}
    for name in ("global", "local"):
        if name in batch and f"{name}_params" in batch:
            v, p = batch[name], batch[f"{name}_params"]
            out[name] = augment(v.flatten(0, 1), p.flatten(0, 1), cfg).view(v.shape)
    return out
