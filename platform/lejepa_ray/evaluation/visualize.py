"""``lejepa-ray visualize``: label-free segmentation maps of a frozen backbone, as pictures.

For a few images of a source, with the backbone of a run, checkpoint or export:

- ``attention.png`` (ViTs with a class token): per image, the image | the last block's CLS
  attention averaged over heads | DINO's mask of it (the patches holding the top 60 % of the
  mass; with the ``synthetic`` source, the true shape outlined in green) | each head's map,
  its own mask outlined;
- ``pca.png`` (any backbone with a spatial map): per image, the image over the first three
  PCA components of its patch features as RGB, one PCA over all the images shown.

With ``iou`` (``synthetic`` source only, whose shapes come with their true masks), the mean
IoU of the head-averaged attention masks against the true masks, beside two trivial masks
that say what a number means: a centred disc of the true masks' mean area, and the whole
image; printed and written to ``iou.json``. The maths is :mod:`lejepa_ray.evaluation.segmentation`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lejepa_ray import storage
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.eval_images import read_images
from lejepa_ray.data.registry import get_source, source_names
from lejepa_ray.data.sources import check_path, data_from_arg
from lejepa_ray.errors import ConfigError, check_field, option
from lejepa_ray.evaluation.export import load_encoder
from lejepa_ray.evaluation.frozen import load_frozen
from lejepa_ray.evaluation.pictures import attention_png, pca_png
from lejepa_ray.evaluation.segmentation import (
    DINO_THRESHOLD,
    attention_module,
    centred_disc,
    cls_attention,
    dino_mask,
    foreground_iou,
    patch_features,
    pca_rgb,
    upsample,
)
from lejepa_ray.model.encoder import LeJEPAEncoder, pixel_normalization

ATTENTION_FILE = "attention.png"
PCA_FILE = "pca.png"
IOU_FILE = "iou.json"
BATCH = 64
"""Images per forward pass."""


@dataclass
class VisualizeOptions:
    """Draw label-free segmentation maps of a frozen backbone for a few images: a ViT's
    last-block CLS attention per head and averaged, with DINO's mask of it (the patches
    holding the top 60% of the attention mass), into attention.png; the first three PCA
    components of the patch features as RGB (ViTs and CNNs), into pca.png. With --iou, on the
    synthetic source, score the masks against the true shapes."""

    source: str
    """A run directory (its latest checkpoint), a checkpoint directory or an ``export``
    folder."""
    data: str
    """The images: ``digits``, ``synthetic``, an image folder or parquet shards; a ``:train``,
    ``:val`` or ``:all`` suffix picks that split (``synthetic:val``: images a run on
    ``data.split=train`` never saw)."""
    out: str
    """Local folder the PNGs (and ``iou.json``) are written to, replacing those of an earlier
    run."""
    samples: int = 8
    """Images drawn."""
    size: int | None = None
    """Image side in px. None: the size the backbone was trained at."""
    threshold: float = DINO_THRESHOLD
    """Attention mass the masks keep (DINO's 0.6)."""
    iou: bool = False
    """Also score the head-averaged attention masks against the true masks (``synthetic``
    only): mean IoU beside a centred disc of the true masks' mean area and the whole image."""
    iou_samples: int = 500
    """Images the IoU is averaged over (the drawn ones among them)."""
    random_init: bool = False
    """The run's architecture at its random initialization (the run's seed, as its probes'
    baseline) instead of the trained weights: the maps the trained ones have to beat. Needs a
    run or checkpoint."""

    def __post_init__(self) -> None:
        check_field(self.samples >= 1, "samples", self.samples, ">= 1")
        check_field(self.size is None or self.size >= 8, "size", self.size, ">= 8 px")
        check_field(0 < self.threshold <= 1, "threshold", self.threshold, "in (0, 1]")
        check_field(self.iou_samples >= 1, "iou_samples", self.iou_samples, ">= 1")


@dataclass
class IoUReport:
    """Mean foreground IoU of masks against the synthetic source's true masks."""

    images: int
    threshold: float
    attention: float
    """The head-averaged attention's DINO mask."""
    heads: list[float]
    """Each head's own DINO mask."""
    centred_disc: float
    """A disc centred in the image, of the true masks' mean area."""
    all_foreground: float
    """The whole image (IoU = the true mask's share of the image)."""
    true_area: float
    """Mean fraction of the image the true masks cover."""
    mask_area: float
    """Mean fraction the attention masks cover."""

    def lines(self) -> list[str]:
        best = max(range(len(self.heads)), key=lambda h: self.heads[h])
        return [
            f"mean foreground IoU over {self.images} images (attention masks: top "
            f"{self.threshold:.0%} of the mass)",
            f"  attention, mean of heads  {self.attention:.3f}  (covers {self.mask_area:.0%} "
            f"of the image; the shapes {self.true_area:.0%})",
            f"  best single head (#{best})  {self.heads[best]:.3f}",
            f"  centred disc of that area {self.centred_disc:.3f}",
            f"  whole image               {self.all_foreground:.3f}",
        ]


@dataclass
class VisualizeResult:
    """What :func:`visualize` drew and measured."""

    source: str
    weights: str
    """``trained`` or ``random init``."""
    data: str
    architecture: str
    image_size: int
    grid: list[int]
    """The patch grid (h, w) of the maps."""
    images: int
    """Images drawn."""
    pca_png: str
    attention_png: str | None = None
    """None: the backbone has no CLS attention (not a ViT with a class token)."""
    iou: IoUReport | None = None
    iou_json: str | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_backbone(source: str, random_init: bool = False) -> tuple[nn.Module, int]:
    """The timm backbone of a run, checkpoint or export, in eval mode, and the image size it
    was trained at. ``random_init``: the same architecture at its initialization, seeded with
    the run's ``seed`` as the driver's random-init probe is.

    Raises:
        CheckpointError: neither an export nor a usable checkpoint.
        ConfigError: ``random_init`` asked of an export (it keeps neither config nor seed).
    """
    if not random_init:
        model, size = load_frozen(source)
        return cast(nn.Module, model.backbone).eval(), size
    path = Path(source)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        raise ConfigError(
            f"{source} is an export, which keeps neither the run's config nor its seed: for "
            f"{option('random_init')}, give the run or checkpoint directory it was exported from."
        )
    trained = load_encoder(source)
    torch.manual_seed(trained.cfg.seed)
    at_init = LeJEPAEncoder(trained.spec, trained.cfg.model)
    return at_init.backbone.eval(), trained.spec.global_size


def _read(cfg: DataConfig, size: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` decodable images of ``cfg`` as uint8 (N, 3, size, size), and their keys.
    A source that makes ``num_samples`` samples before its split keeps some (synthetic): ask
    for more until the split holds ``count`` (or 10,000 are all read), from 100 samples, whose
    ``val`` share is not empty."""
    before_split = get_source(cfg.source).num_samples_before_split
    want = max(count, 100) if before_split else count
    while True:
        images, _, keys = read_images(cfg, size, want, labelled=False)
        if len(images) >= count or not before_split or want >= 10_000:
            break
        want = min(10_000, 2 * want)
    if not images:
        raise ConfigError(
            f"{option('data')}={cfg.path or cfg.source!r} gave no image that decodes: nothing "
            "to draw."
        )
    return torch.stack(images[:count]), keys[:count]


@torch.no_grad()
def _maps(
    backbone: nn.Module, images: torch.Tensor, attention: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-head CLS attention (N, heads, h, w) (None without ``attention``) and patch
    features (N, h, w, C) of uint8 ``images`` (N, 3, S, S), normalized as in training."""
    mean, std = pixel_normalization(backbone)
    attn, feats = [], []
    for i in range(0, len(images), BATCH):
        pixels = (images[i : i + BATCH].float() - mean) / std
        if attention:
            attn.append(cls_attention(backbone, pixels))
        feats.append(patch_features(backbone, pixels))
    return (torch.cat(attn) if attention else None), torch.cat(feats)


def score_iou(
    mean_attention: torch.Tensor, head_attention: torch.Tensor, truth: np.ndarray, threshold: float
) -> IoUReport:
    """The IoU report of attention maps (N, h, w) and (N, heads, h, w) against true masks
    bool (N, S, S)."""
    size = (truth.shape[1], truth.shape[2])
    pred = upsample(dino_mask(mean_attention, threshold), size).numpy()
    heads = upsample(dino_mask(head_attention, threshold), size).numpy()  # (N, heads, S, S)
    area = float(truth.mean())
    disc = np.broadcast_to(centred_disc(size, area), truth.shape)
    return IoUReport(
        images=len(truth),
        threshold=threshold,
        attention=float(foreground_iou(pred, truth).mean()),
        heads=[float(foreground_iou(heads[:, h], truth).mean()) for h in range(heads.shape[1])],
        centred_disc=float(foreground_iou(disc, truth).mean()),
        all_foreground=float(foreground_iou(np.ones_like(truth), truth).mean()),
        true_area=area,
        mask_area=float(pred.mean()),
    )


def visualize(options: VisualizeOptions) -> VisualizeResult:
    """Draw the maps of :class:`VisualizeOptions` into ``options.out`` (and score them with
    ``iou``).

    Raises:
        ConfigError, SourceError: invalid options or data, before the model is loaded; a
            backbone with neither CLS attention nor a spatial map; ``iou`` without attention.
        CheckpointError: ``source`` is neither an export nor a usable checkpoint.
    """
    o = options
    if not storage.is_local(o.out):
        raise ConfigError(
            f"{option('out')}={o.out!r}: visualize writes to a local folder; give one."
        )
    check_path(data_from_arg(o.data))  # a typo costs no model load
    if o.iou and not get_source(data_from_arg(o.data).source).has_true_masks:
        masked = [n for n in source_names() if get_source(n).has_true_masks]
        raise ConfigError(
            f"{option('iou')} needs true masks, which only the {' and '.join(masked)} source"
            f"{'s have' if len(masked) > 1 else ' has'} ({option('data')}={o.data!r}): "
            f"use {option('data')}={masked[0]}:val, or leave {option('iou')} out."
        )
    storage.check_output(o.out, "output folder")
    backbone, trained_size = load_backbone(o.source, o.random_init)
    size = o.size or trained_size
    cfg = data_from_arg(o.data, size)
    images, keys = _read(cfg, size, max(o.samples, o.iou_samples if o.iou else 0))
    has_attention = attention_module(backbone) is not None
    if o.iou and not has_attention:
        raise ConfigError(
            f"{option('iou')} scores CLS-attention masks, and {type(backbone).__name__} has none "
            "(a timm VisionTransformer with a class token has): leave "
            f"{option('iou')} out for its PCA map."
        )
    attn, feats = _maps(backbone, images, has_attention)
    source = get_source(cfg.source)
    truth = source.true_masks(cfg, keys) if source.has_true_masks else None
    out = Path(o.out.removeprefix("file://"))
    out.mkdir(parents=True, exist_ok=True)
    for name in (PCA_FILE, ATTENTION_FILE, IOU_FILE):  # a previous run's: none may look current
        (out / name).unlink(missing_ok=True)
    weights = "random init" if o.random_init else "trained"
    arch = getattr(backbone, "default_cfg", {}).get("architecture") or type(backbone).__name__
    title = f"{arch} ({weights}) from {o.source}, {o.data} at {size} px"
    shown = min(o.samples, len(images))
    result = VisualizeResult(
        o.source,
        weights,
        o.data,
        str(arch),
        size,
        list(feats.shape[1:3]),
        shown,
        str(out / PCA_FILE),
    )
    (out / PCA_FILE).write_bytes(
        pca_png(images[:shown], pca_rgb(feats[:shown]), f"{title}: PCA of patch features")
    )
    result.files.append(result.pca_png)
    if attn is not None:
        result.attention_png = str(out / ATTENTION_FILE)
        (out / ATTENTION_FILE).write_bytes(
            attention_png(
                images[:shown],
                attn[:shown],
                o.threshold,
                None if truth is None else truth[:shown],
                f"{title}: last-block CLS attention; mask = top {o.threshold:.0%} of its mass",
            )
        )
        result.files.append(result.attention_png)
    if o.iou:
        assert attn is not None and truth is not None  # refused above otherwise
        result.iou = score_iou(attn.mean(1), attn, truth, o.threshold)
        result.iou_json = str(out / IOU_FILE)
        (out / IOU_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        result.files.append(result.iou_json)
    return result
