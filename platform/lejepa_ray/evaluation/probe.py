"""Frozen-feature probes: how well backbone features separate labelled classes.

Labelled images are resized (short side) and centre-cropped to the global view size and
embedded by the backbone (pooled features, no projector). The images are split into a bank
(what the probes are fitted on) and queries (what they are scored on) by one of two protocols:

- ``train/val``: the bank is one labelled set and the queries another (an ImageNet-style
  ``train/`` and ``val/``, or ``data.split=train`` and ``val`` of one source);
- ``hash 80/20``: one set, split by a hash of each sample's key (1 in 5 are queries).

One protocol for every feature set (trained backbone, random init, raw pixels), so that their
figures compare like with like (:data:`PREPARATION`): each feature dimension is standardized
with the bank's mean and std, statistics from the bank only, and then

- **kNN**: the standardized features are L2-normalized; each query's k nearest bank features
  by cosine similarity vote with weights exp(similarity / T) (DINO's weighted kNN, here on
  the standardized features);
- **linear**: multinomial logistic regression (L2 penalty C = 1) on the standardized features.

Raw pixels are the flattened pixels of the same images at the same size: the figure a
representation has to beat to be worth keeping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.eval_images import read_images
from lejepa_ray.data.keys import stable_hash
from lejepa_ray.errors import ConfigError
from lejepa_ray.evaluation.config import ProbeConfig

PREPARATION = (
    "every feature dimension standardized with the bank's mean and std; kNN: then "
    "L2-normalized, cosine similarity; linear: logistic regression on the standardized features"
)
"""The probe protocol, as the JSON and docs state it (one for every feature set)."""

HASH_SPLIT = "hash 80/20"
TRAIN_VAL = "train/val"


class Featurizer(Protocol):
    """What the probes embed with: ``eval()`` and ``features(uint8 (N, 3, S, S)) -> (N, D)``."""

    def eval(self) -> object: ...

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LabelledImages:
    """Evaluation images: uint8 ``images`` (N, 3, S, S), ``labels`` (N,), ``is_query`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    is_query: torch.Tensor
    protocol: str = HASH_SPLIT
    """How bank and queries were chosen: ``HASH_SPLIT`` or ``TRAIN_VAL``."""

    @property
    def bank_size(self) -> int:
        return int((~self.is_query).sum())

    @property
    def query_size(self) -> int:
        return int(self.is_query.sum())

    @property
    def classes(self) -> int:
        return int(self.labels.unique().numel())


def load_labelled(
    data: DataConfig, size: int, max_samples: int, val: DataConfig | None = None
) -> LabelledImages:
    """Labelled images for the probes: the bank from ``data`` and the queries from ``val``
    (``TRAIN_VAL``), or, without ``val``, both from ``data`` by the hash split
    (``HASH_SPLIT``). At most ``max_samples`` images are read from each.

    Raises:
        ValueError: fewer than 2 classes, or no bank or no queries.
    """
    images, labels, keys = read_images(data, size, max_samples)
    if val is None:
        query = [stable_hash("probe-split", key) % 5 == 0 for key in keys]
        protocol = HASH_SPLIT
    else:
        val_images, val_labels, _ = read_images(val, size, max_samples)
        query = [False] * len(images) + [True] * len(val_images)
        images, labels, protocol = images + val_images, labels + val_labels, TRAIN_VAL
    if len(set(labels)) < 2 or not any(query) or all(query):
        raise ConfigError(
            f"the probes need labelled images of at least 2 classes in both the bank and the "
            f"queries; data.source={data.source} gave {len(labels)} labelled images (an image "
            "folder is labelled by its subfolders). To pretrain on unlabelled data, set "
            "probe.knn=false."
        )
    return LabelledImages(torch.stack(images), torch.tensor(labels), torch.tensor(query), protocol)


@torch.no_grad()
def embed(encoder: Featurizer, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Backbone features (N, D), float32, of uint8 ``images`` (N, 3, S, S)."""
    encoder.eval()
    feats = [
        encoder.features(images[i : i + batch_size]).float()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(feats)


def standardize(features: torch.Tensor, is_query: torch.Tensor) -> torch.Tensor:
    """``features`` (N, D) with each dimension standardized by the bank's (``~is_query``) mean
    and std: the first step of the protocol, for every feature set. A dimension constant over
    the bank (std 0) is centred and left at that scale."""
    # Statistics in float64 (pixels sum to large numbers), applied in float32: a float64 copy
    # of 10,000 images of 128 px would be 4 GB.
    bank = features[~is_query].double()
    mean, std = bank.mean(0), bank.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (features.float() - mean.float()) / std.float()


def knn_vote(
    sims: torch.Tensor, bank_labels: torch.Tensor, classes: int, k: int, temperature: float
) -> torch.Tensor:
    """Predicted classes (Q,) of queries whose cosine similarities to the bank are ``sims``
    (Q, B): the ``k`` most similar bank images vote for their ``bank_labels`` (B,), each with
    weight exp(sim / ``temperature``)."""
    top, idx = sims.topk(min(k, sims.shape[1]), dim=1)
    votes = torch.zeros(len(sims), classes)
    votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
    return votes.argmax(1)


def knn_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    is_query: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of temperature-weighted kNN votes of the queries among the bank, by
    cosine similarity of ``features`` (N, D)."""
    features = torch.nn.functional.normalize(features, dim=1)
    bank, bank_labels = features[~is_query], labels[~is_query]
    queries, truth = features[is_query], labels[is_query]
    predicted = knn_vote(queries @ bank.T, bank_labels, int(labels.max()) + 1, k, temperature)
    return float((predicted == truth).float().mean())


def linear_accuracy(
    features: torch.Tensor, labels: torch.Tensor, is_query: torch.Tensor, max_iter: int = 1000
) -> float:
    """Top-1 accuracy on the queries of a multinomial logistic regression fitted on the bank's
    frozen ``features`` (N, D), as given (scikit-learn's L-BFGS, L2 penalty C=1)."""
    # lazy: scikit-learn takes about a second to import; only the linear probe needs it.
    from sklearn import linear_model

    x, y = features.double().numpy(), labels.numpy()
    bank, query = ~is_query.numpy(), is_query.numpy()
    model = linear_model.LogisticRegression(max_iter=max_iter)
    model.fit(x[bank], y[bank])
    return float((model.predict(x[query]) == y[query]).mean())


def raw_pixels(data: LabelledImages) -> torch.Tensor:
    """The raw-pixel features (N, 3·S·S) of ``data``: its images' pixels, flattened."""
    return data.images.flatten(1).float()


@dataclass(frozen=True)
class Scores:
    """Top-1 accuracies in [0, 1] of the probes on one set of features (kNN always runs;
    linear None when not run)."""

    knn_top1: float
    linear_top1: float | None

    def cells(self) -> list[str]:
        return ["-" if v is None else f"{v:.3f}" for v in (self.knn_top1, self.linear_top1)]


def score(features: torch.Tensor, data: LabelledImages, cfg: ProbeConfig) -> Scores:
    """The probes ``cfg`` asks for (kNN, and linear when ``cfg.linear``) on ``features``
    (N, D) of ``data``'s images, under the protocol (:data:`PREPARATION`)."""
    x = standardize(features, data.is_query)
    knn = knn_accuracy(x, data.labels, data.is_query, cfg.k, cfg.temperature)
    linear = linear_accuracy(x, data.labels, data.is_query) if cfg.linear else None
    return Scores(knn, linear)


@dataclass(frozen=True)
class ProbeReport:
    """The probes of a trained backbone beside its baselines, on one bank/query split."""

    protocol: str
    """``train/val`` or ``hash 80/20`` (see the module docstring)."""
    preparation: str
    """How every feature set was prepared for the probes (:data:`PREPARATION`)."""
    image_size: int
    """Side in pixels of the probed images."""
    bank: int
    """Images the probes were fitted on."""
    queries: int
    """Images the probes were scored on."""
    classes: int
    trained: Scores
    """The backbone after training."""
    init: Scores | None
    """The same architecture at its random initialization (same seed), or None."""
    raw: Scores | None
    """Raw pixels (:func:`raw_pixels`), or None."""

    def rows(self) -> list[tuple[str, Scores]]:
        named = [
            ("trained backbone", self.trained),
            ("random init", self.init),
            ("raw pixels", self.raw),
        ]
        return [(name, s) for name, s in named if s is not None]

    def table(self) -> str:
        """A small text table: one row per feature set, kNN and linear top-1."""
        lines = [
            f"probe ({self.protocol}: fitted on {self.bank}, scored on {self.queries} "
            f"images, {self.classes} classes, {self.image_size} px)",
            f"  {'features':<18}{'kNN top-1':>10}{'linear top-1':>14}",
        ]
        for name, s in self.rows():
            knn, linear = s.cells()
            lines.append(f"  {name:<18}{knn:>10}{linear:>14}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def probe_report(
    trained: Featurizer,
    data: LabelledImages,
    cfg: ProbeConfig,
    init: Featurizer | None = None,
) -> ProbeReport:
    """The probes of ``trained`` (and of ``init``, and of raw pixels when ``cfg.baseline``)."""
    return ProbeReport(
        data.protocol,
        PREPARATION,
        int(data.images.shape[-1]),
        data.bank_size,
        data.query_size,
        data.classes,
        score(embed(trained, data.images), data, cfg),
        None if init is None else score(embed(init, data.images), data, cfg),
        score(raw_pixels(data), data, cfg) if cfg.baseline else None,
    )
