"""RankMe: the effective rank of a batch of embeddings, a label-free quality signal.

Garrido et al. (2023), "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank". For embeddings ``Z`` (N, D) with singular
values σ_1 ≥ ... ≥ σ_m (m = min(N, D)),

    p_k = σ_k / Σ_j σ_j + ε,        RankMe(Z) = exp(−Σ_k p_k log p_k),

the exponential of the entropy of the normalized singular values (ε = 1e-7, as in the paper).
It is 1 when all the variance lies along one direction (collapse) and m when the singular values
are all equal (an isotropic cloud). It does not change when ``Z`` is scaled or rotated, so it
compares checkpoints of one run and runs of one architecture without labels; across backbones
of other widths it is bounded by other m. **Higher is better**: the paper finds it rises with
downstream accuracy within a method.

Here it is measured on a fixed batch of images the run does not train on (``data.split=val``
when the run trains on ``train``), at every checkpoint, on the backbone's pooled features and
on the projector's outputs (``rankme/backbone``, ``rankme/projector``). Every rank computes it
(FSDP2 gathers parameters for the forward) and rank 0's value is logged: BatchNorm running
statistics are per rank, and rank 0's are the ones its checkpoint saves. Under bf16 the
embeddings are bf16-rounded before the SVD, which raises the smallest singular values a little.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.eval_images import read_images
from lejepa_ray.errors import ConfigError
from lejepa_ray.model.encoder import LeJEPAEncoder

EPS = 1e-7


def effective_rank(z: torch.Tensor, eps: float = EPS) -> float:
    """RankMe of embeddings ``z`` (N, D): exp of the entropy of the L1-normalized singular
    values, in [1, min(N, D)] up to ``eps``. Computed in float64. NaN when ``z`` holds a
    non-finite value (a diverging run): a metric, never a reason to stop training."""
    if z.ndim != 2 or min(z.shape) < 1:
        raise ValueError(f"effective_rank needs a non-empty (N, D) matrix, got {tuple(z.shape)}.")
    if not torch.isfinite(z).all():
        return math.nan
    return spectrum_rank(singular_spectrum(z), eps)


def spectrum_rank(p: torch.Tensor, eps: float = EPS) -> float:
    """RankMe of normalized singular values ``p`` (m,) (:func:`singular_spectrum`): the exp of
    the entropy of ``p + eps``; 1 when ``p`` is all zeros."""
    if p.sum() <= 0:  # all zeros: no direction at all
        return 1.0
    p = p + eps
    return math.exp(float(-(p * p.log()).sum()))


def singular_spectrum(z: torch.Tensor) -> torch.Tensor:
    """The normalized singular values ``p_k = σ_k / Σ_j σ_j`` of ``z`` (N, D) that RankMe takes
    the entropy of (without its ε): float64 (min(N, D),), descending, summing to 1; all zeros
    when ``z`` is zero. ``z`` must be finite (the SVD fails to converge otherwise)."""
    sigma = torch.linalg.svdvals(z.detach().double())
    total = sigma.sum()
    return sigma / total if total > 0 else sigma


def heldout_data(data: DataConfig) -> tuple[DataConfig, bool]:
    """The data RankMe's batch comes from, and whether the run never trains on it: the val
    split when the run trains on ``data.split=train``, else the training data itself."""
    if data.split == "train":
        return dataclasses.replace(data, split="val"), True
    return data, False


def heldout_batch(data: DataConfig, size: int, samples: int) -> torch.Tensor:
    """A fixed batch of up to ``samples`` uint8 images (N, 3, S, S) of ``data``'s held-out part
    (:func:`heldout_data`), resized and centre-cropped to ``size``; the same on every call and
    every rank."""
    source, _ = heldout_data(data)
    images, _, _ = read_images(source, size, samples, labelled=False)
    if not images:
        raise ConfigError(
            f"data.source={data.source} (split {source.split}) has no decodable images for "
            "RankMe's batch; set logging.rankme_samples=0 to turn RankMe off."
        )
    return torch.stack(images)


@torch.no_grad()
def rankme_metrics(
    encoder: LeJEPAEncoder,
    images: torch.Tensor,
    *,
    bf16: bool = False,
    batch_size: int = 256,
) -> dict[str, float]:
    """``rankme/backbone`` and ``rankme/projector`` of ``encoder`` (a ``LeJEPAEncoder``, or one
    sharded by FSDP2, called on every rank at once) on uint8 ``images`` (N, 3, S, S), in eval
    mode (BatchNorm on its running statistics; the mode it had is restored), under bf16
    autocast when ``bf16`` (as training computes)."""
    return rankme_of(*heldout_embeddings(encoder, images, bf16=bf16, batch_size=batch_size))


def rankme_of(feats: torch.Tensor, projs: torch.Tensor) -> dict[str, float]:
    """``rankme/backbone`` and ``rankme/projector`` of embeddings :func:`heldout_embeddings`
    computed: backbone features (N, D) and projector outputs (N, K)."""
    return {"rankme/backbone": effective_rank(feats), "rankme/projector": effective_rank(projs)}


@torch.no_grad()
def heldout_embeddings(
    encoder: LeJEPAEncoder,
    images: torch.Tensor,
    *,
    bf16: bool = False,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings :func:`rankme_metrics` measures, computed as it computes them: the
    backbone's pooled features (N, D) and the projector's outputs (N, K) of uint8 ``images``
    (N, 3, S, S), float32 on the CPU. For callers that want more than RankMe of them (the
    pictures of ``train.diagnostics``) without a second forward."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = encoder.mean.device  # a buffer: real under FSDP2, where parameters are DTensors
        feats, projs = [], []
        for i in range(0, len(images), batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                f, p = encoder.embeddings(images[i : i + batch_size].to(device))
            feats.append(f.float().cpu())
            projs.append(p.float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(feats), torch.cat(projs)
