"""Label-free segmentation from a frozen backbone: the maths of ``lejepa-ray visualize``.

Two kinds of maps, both from the backbone alone (no labels, no decoder):

- **attention** (timm ``VisionTransformer`` with a class token): the last block's attention of
  the CLS token to the patch tokens, per head, as in DINO (Caron et al., 2021, Fig. 1 and its
  ``visualize_attention.py``), and the mask DINO draws from it: the patches holding the top
  ``threshold`` (0.6) of the attention mass (:func:`dino_mask`);
- **PCA** (any backbone with a spatial map: ViT patch tokens, a CNN's last feature map): the
  first three principal components of the patch features, fitted over all the images shown
  together, as RGB (:func:`pca_rgb`).

:func:`foreground_iou` scores masks against true ones (the ``synthetic`` source draws them).
Everything here is torch and numpy on tensors; loading, drawing and the command are in
:mod:`lejepa_ray.evaluation.visualize`.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lejepa_ray.errors import ConfigError

DINO_THRESHOLD = 0.6
"""Attention mass the mask keeps (DINO's ``--threshold 0.6``)."""


def attention_module(backbone: nn.Module) -> Any:
    """The last block's attention of a timm ``VisionTransformer`` with a class token (a
    ``timm.layers.Attention``, whose unfused path hands the attention matrix to its
    ``attn_drop``), or None for any other backbone. (Typed ``Any``: timm's modules are not.)"""
    # lazy: timm takes about a second to import, and only a backbone's maps need it.
    from timm.layers import Attention

    blocks = getattr(backbone, "blocks", None)
    if getattr(backbone, "cls_token", None) is None or not isinstance(blocks, nn.Sequential):
        return None
    if len(blocks) == 0:
        return None
    attn = getattr(blocks[-1], "attn", None)
    return attn if isinstance(attn, Attention) else None


def _grid(backbone: nn.Module, height: int, width: int, tokens: int) -> tuple[int, int]:
    """The patch grid (h, w) a ViT cuts an image of ``height`` × ``width`` px into: timm's own
    rule (``dynamic_img_pad`` rounds up), checked against the ``tokens`` it produced."""
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        h, w = patch_embed.dynamic_feat_size((height, width))
    else:  # a square grid is the only one the token count alone gives
        h = w = math.isqrt(tokens)
    if h * w != tokens:
        raise ConfigError(
            f"{type(backbone).__name__} gave {tokens} patch tokens for a {height}×{width} image, "
            f"not a {h}×{w} grid: its tokens cannot be laid out as a map. Visualize a "
            "VisionTransformer or a CNN backbone."
        )
    return int(h), int(w)


@torch.no_grad()
def cls_attention(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The last block's attention of the CLS token to the patch tokens, per head.

    Args:
        backbone: a timm ``VisionTransformer`` with a class token (:func:`attention_module`).
        pixels: normalized images (N, 3, H, W).

    Returns:
        float32 (N, heads, h, w), h × w the patch grid: each head's softmax row of the CLS
        query over the patch keys, renormalized over the patches (the mass on the prefix
        tokens, CLS and registers, is dropped), so each map sums to 1.

    Raises:
        ConfigError: the backbone has no such attention.
    """
    attn = attention_module(backbone)
    if attn is None:
        raise ConfigError(
            f"{type(backbone).__name__} has no CLS-token attention to show (expected a timm "
            "VisionTransformer with a class token): use its PCA map instead."
        )
    seen: list[torch.Tensor] = []

    def keep(_: nn.Module, __: Any, out: torch.Tensor) -> None:
        seen.append(out)

    # Fused attention (SDPA) never materializes the matrix; timm's unfused path computes the same
    # softmax(q·kᵀ·scale) and passes it through attn_drop (identity in eval), where the hook
    # reads it. The switch is timm's own attribute, restored after the pass.
    fused = attn.fused_attn
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(keep)
    try:
        backbone.eval()
        cast(Any, backbone).forward_features(pixels)
    finally:
        handle.remove()
        attn.fused_attn = fused
    matrix = seen[-1].float()  # (N, heads, T, T), rows are queries
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    # timm puts the class token first, then any register tokens, then the patches.
    row = matrix[:, :, 0, prefix:]
    row = row / row.sum(-1, keepdim=True).clamp_min(1e-12)
    h, w = _grid(backbone, pixels.shape[-2], pixels.shape[-1], row.shape[-1])
    return row.reshape(*row.shape[:2], h, w)


@torch.no_grad()
def patch_features(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The backbone's last spatial map of normalized images (N, 3, H, W), as (N, h, w, C):
    a ViT's patch tokens after its final norm (the prefix tokens left out), or a CNN's
    ``forward_features`` map (NCHW, or NHWC where timm says ``output_fmt="NHWC"``: Swin).

    Raises:
        ConfigError: ``forward_features`` gives no spatial map (pooled features only).
    """
    backbone.eval()
    out = cast(Any, backbone).forward_features(pixels)
    if isinstance(out, (list, tuple)):  # a few families return several maps: the last one
        out = out[-1]
    if out.dim() == 4:
        channels_last = str(getattr(backbone, "output_fmt", "NCHW")) == "NHWC"
        return (out if channels_last else out.permute(0, 2, 3, 1)).float()
    prefix = getattr(backbone, "num_prefix_tokens", None)
    if out.dim() == 3 and prefix is not None:
        tokens = out[:, int(prefix) :]
        h, w = _grid(backbone, pixels.shape[-2], pixels.shape[-1], tokens.shape[1])
        return tokens.reshape(len(tokens), h, w, -1).float()
    raise ConfigError(
        f"{type(backbone).__name__}'s forward_features gives {tuple(out.shape)}, neither a "
        "feature map (N, C, h, w) nor ViT tokens: it has no spatial map (and no CLS attention) "
        "to draw. Visualize a VisionTransformer or a CNN backbone."
    )


def dino_mask(attention: torch.Tensor, threshold: float = DINO_THRESHOLD) -> torch.Tensor:
    """DINO's mask of an attention map: the patches holding the top ``threshold`` of its mass.

    The map's values are sorted ascending, normalized to sum 1 and summed cumulatively; a
    patch is kept when that sum, up to and including it, is above ``1 - threshold``: the
    largest values, fewest first, until they hold at least ``threshold`` of the mass (ties in
    order of position, as a stable sort leaves them).

    Args:
        attention: non-negative maps (..., h, w), any leading dimensions (heads, images).
        threshold: attention mass to keep, in (0, 1].

    Returns:
        bool (..., h, w).
    """
    flat = attention.flatten(-2).double()
    values, order = torch.sort(flat, dim=-1, stable=True)
    values = values / values.sum(-1, keepdim=True).clamp_min(1e-300)
    kept_sorted = values.cumsum(-1) > 1 - threshold
    kept = torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)
    return kept.reshape(attention.shape)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Patch maps (..., h, w) to image pixels (..., H, W): each patch's value over the pixels
    it covers (nearest, as DINO draws them), the grid's padding (``dynamic_img_pad``) cut
    off. Bool maps stay bool."""
    h, w = maps.shape[-2:]
    ph, pw = math.ceil(size[0] / h), math.ceil(size[1] / w)
    out = maps.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)
    return out[..., : size[0], : size[1]]


def pca_rgb(features: torch.Tensor, components: int = 3) -> torch.Tensor:
    """The first ``components`` principal components of patch features as colours.

    One PCA over the patches of all the images (so colours compare across them): features
    centred by their mean, projected on the top right-singular vectors, each component's sign
    chosen so that its largest loading is positive (SVD leaves it arbitrary), then min-max
    scaled to [0, 1] over all patches (a constant component is 0). A backbone with fewer
    channels than ``components`` leaves the missing ones 0.

    Args:
        features: (N, h, w, C).

    Returns:
        float32 (N, h, w, components), in [0, 1].
    """
    n, h, w, c = features.shape
    x = features.reshape(-1, c).double()
    x = x - x.mean(0, keepdim=True)
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    basis = vt[:components]  # (k, C), rows ordered by singular value
    biggest = basis.abs().argmax(1, keepdim=True)
    basis = basis * basis.gather(1, biggest).sign()
    projected = x @ basis.T  # (M, k)
    low, high = projected.min(0).values, projected.max(0).values
    span = high - low
    scaled = torch.where(span > 0, (projected - low) / span.clamp_min(1e-300), 0.0)
    out = torch.zeros(len(x), components, dtype=torch.float64)
    out[:, : scaled.shape[1]] = scaled
    return out.reshape(n, h, w, components).float()


def foreground_iou(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-image intersection over union of two sets of foreground masks.

    Args:
        pred: bool (N, H, W).
        true: bool (N, H, W).

    Returns:
        float64 (N,): |pred ∧ true| / |pred ∨ true| per image (``.mean()`` is the mean IoU).
        Rule for an image where both masks are empty (the union is 0): IoU 1, the prediction
        being exactly right; an empty prediction of a non-empty truth (or the reverse) is 0.
    """
    p, t = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"masks must both be (N, H, W), got {p.shape} and {t.shape}")
    inter = (p & t).sum((1, 2)).astype(np.float64)
    union = (p | t).sum((1, 2)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def centred_disc(size: tuple[int, int], area: float) -> np.ndarray:
    """bool (H, W): the disc centred in the image covering the fraction ``area`` of it (as
    near as pixels allow): the trivial mask an attention mask has to beat."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    radius = math.sqrt(max(area, 0.0) * height * width / math.pi)
    return (y + 0.5 - height / 2) ** 2 + (x + 0.5 - width / 2) ** 2 <= radius**2
