"""The pictures of ``lejepa-ray visualize``: attention and PCA maps drawn as PNG bytes.

``evaluation.visualize`` computes the maps (with ``evaluation.segmentation``) and writes the
files; this module only draws, on matplotlib ``Figure`` objects (not pyplot's global state, so
it is safe in any thread), imported when a picture is drawn.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

import numpy as np
import torch

from lejepa_ray.evaluation.segmentation import dino_mask, upsample


def _figure(rows: int, cols: int, title: str) -> tuple[Any, Any]:
    # lazy: matplotlib takes about a second to import; only drawing needs it.
    from matplotlib.figure import Figure

    # A Figure of its own rather than pyplot's: no process-wide backend, no global figure. The
    # constrained layout leaves the (wrapped) title its own room above the panels' titles.
    fig = Figure(figsize=(1.5 * cols, 1.5 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(textwrap.fill(title, max(30, int(27 * cols))), fontsize=7)
    return fig, axes


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 (3, S, S) -> (S, S, 3) for imshow."""
    return image.permute(1, 2, 0).numpy()


def attention_png(
    images: torch.Tensor,
    attention: torch.Tensor,
    threshold: float,
    truth: np.ndarray | None,
    title: str,
) -> bytes:
    """PNG, a row per image: the image | the head-averaged attention | its DINO mask over the
    image (the true mask outlined in green when given) | each head's map with its mask
    outlined. ``images`` uint8 (N, 3, S, S), ``attention`` (N, heads, h, w), ``truth`` bool
    (N, S, S) or None."""
    n, heads = attention.shape[:2]
    size = (images.shape[-2], images.shape[-1])
    mean = attention.mean(1)
    maps = upsample(torch.cat([mean[:, None], attention], 1), size).numpy()
    masks = upsample(dino_mask(torch.cat([mean[:, None], attention], 1), threshold), size)
    masks_np = masks.numpy()
    fig, axes = _figure(n, 3 + heads, title)
    headers = ["image", "mean attention", f"mask ({threshold:.0%})"]
    headers += [f"head {h}" for h in range(heads)]
    for col, text in enumerate(headers):
        axes[0, col].set_title(text, fontsize=7)
    for i in range(n):
        rgb = _rgb(images[i])
        axes[i, 0].imshow(rgb)
        axes[i, 1].imshow(maps[i, 0], cmap="viridis")
        dimmed = (rgb * np.where(masks_np[i, 0, ..., None], 1.0, 0.25)).astype(np.uint8)
        axes[i, 2].imshow(dimmed)
        if truth is not None and truth[i].any():
            axes[i, 2].contour(truth[i], levels=[0.5], colors="lime", linewidths=0.8)
        for h in range(heads):
            axes[i, 3 + h].imshow(maps[i, 1 + h], cmap="viridis")
            if masks_np[i, 1 + h].any() and not masks_np[i, 1 + h].all():
                axes[i, 3 + h].contour(
                    masks_np[i, 1 + h], levels=[0.5], colors="white", linewidths=0.6
                )
    return _png(fig)


def pca_png(images: torch.Tensor, rgb: torch.Tensor, title: str) -> bytes:
    """PNG, a column per image: the image over its PCA colours. ``images`` uint8
    (N, 3, S, S), ``rgb`` (N, h, w, 3) in [0, 1]."""
    n = len(images)
    size = (images.shape[-2], images.shape[-1])
    colours = upsample(rgb.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()
    fig, axes = _figure(2, n, title)
    for i in range(n):
        axes[0, i].imshow(_rgb(images[i]))
        axes[1, i].imshow(colours[i])
    for row, text in enumerate(("image", "PCA as RGB")):
        axes[row, 0].set_axis_on()  # the row's label is the first panel's y label
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        axes[row, 0].set_ylabel(text, fontsize=7)
    return _png(fig)
