"""kNN probe: how well frozen backbone features separate the labelled classes.

Labelled images of the source are resized (short side) and centre-cropped to the global view
size, embedded by the backbone (pooled features, no projector), L2-normalized, and split 80/20
by a hash of each sample's key into a memory bank and queries. Each query's k nearest bank
features by cosine similarity vote for their labels with weights exp(similarity / T), as in
DINO's and the LeJEPA paper's kNN evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from lejepa_ray.config import ProbeConfig
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.decode import BadImage, decode_rgb
from lejepa_ray.data.sources import LocalSource
from lejepa_ray.data.views import stable_hash
from lejepa_ray.model import LeJEPAEncoder


@dataclass(frozen=True)
class LabelledImages:
    """Evaluation images: uint8 ``images`` (N, 3, S, S), ``labels`` (N,), ``is_query`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    is_query: torch.Tensor


def load_labelled(data: DataConfig, size: int, max_samples: int) -> LabelledImages:
    """Up to ``max_samples`` decodable, labelled images of ``data``'s source, spread evenly
    (parquet: the first rows, which the converter already mixed)."""
    limit = min(data.num_samples or max_samples, max_samples)
    # LocalSource reads into this process: never more than the probe needs.
    source = LocalSource(dataclasses.replace(data, num_samples=limit))
    if len(source) == 0:
        raise ValueError(f"data.source={data.source} has no images to probe with.")
    picks = np.unique(np.linspace(0, len(source) - 1, min(max_samples, len(source))).astype(int))
    prepare = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    images, labels, query = [], [], []
    for i in picks:
        row = source[int(i)]
        if row["label"] is None or row["label"] < 0:
            continue
        try:
            img = decode_rgb(row["image"], data.max_pixels)
        except BadImage:
            continue
        images.append(prepare(img))
        labels.append(int(row["label"]))
        query.append(stable_hash("probe-split", row["key"]) % 5 == 0)
    if len(set(labels)) < 2 or not any(query) or all(query):
        raise ValueError(
            f"the probes need labelled images of at least 2 classes; data.source="
            f"{data.source} gave {len(labels)} labelled images (an image folder is labelled by "
            "its subfolders). To pretrain on unlabelled data, set probe.knn=false.")
    return LabelledImages(torch.stack(images), torch.tensor(labels), torch.tensor(query))


@torch.no_grad()
def embed(encoder: LeJEPAEncoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalized backbone features (N, D) of uint8 ``images`` (N, 3, S, S). ``encoder`` is
    anything with ``eval()`` and ``features(uint8 images) -> (N, D)``."""
    encoder.eval()
    feats = [encoder.features(images[i: i + batch_size]).float()
             for i in range(0, len(images), batch_size)]
    return torch.nn.functional.normalize(torch.cat(feats), dim=1)


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, is_query: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy of temperature-weighted kNN votes of the queries among the bank."""
    bank, bank_labels = features[~is_query], labels[~is_query]
    queries, truth = features[is_query], labels[is_query]
    k = min(k, len(bank))
    sims, idx = (queries @ bank.T).topk(k, dim=1)
    votes = torch.zeros(len(queries), int(labels.max()) + 1)
    votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
    return float((votes.argmax(1) == truth).float().mean())


def linear_accuracy(features: torch.Tensor, labels: torch.Tensor, is_query: torch.Tensor,
                    max_iter: int = 1000) -> float:
    """Top-1 accuracy on the queries of a multinomial logistic regression fitted on the bank's
    frozen features (standardized; scikit-learn's L-BFGS, L2 penalty C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = features.double().numpy(), labels.numpy()
    bank, query = ~is_query.numpy(), is_query.numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(x[bank], y[bank])
    return float((model.predict(x[query]) == y[query]).mean())


def knn_probe(encoder: LeJEPAEncoder, data: LabelledImages, cfg: ProbeConfig) -> float:
    """kNN top-1 accuracy of ``encoder``'s backbone features on ``data``."""
    feats = embed(encoder, data.images)
    return knn_accuracy(feats, data.labels, data.is_query, cfg.k, cfg.temperature)
