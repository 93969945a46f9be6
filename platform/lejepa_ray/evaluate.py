"""``lejepa-ray eval``: frozen-feature probes of a checkpoint or an exported backbone.

The backbone's pooled features (no projector) of labelled images, resized and centre-cropped to
the size it was trained at, are L2-normalized and split 80/20 into a bank and queries by a hash
of each image's key (``probe.load_labelled``). Two probes, both on the same split:

- **kNN**: cosine similarity, k nearest bank features vote with weights exp(sim / T)
  (k = 20, T = 0.07 by default), as in DINO and the LeJEPA paper;
- **linear**: multinomial logistic regression on the bank's standardized features.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lejepa_ray.export import load_encoder
from lejepa_ray.model import pixel_normalization

PROBES = ("knn", "linear", "both")


class FrozenBackbone(nn.Module):
    """An exported backbone taking uint8 images, normalized as in training
    (``LeJEPAEncoder``): ``features((N, 3, S, S) uint8) -> (N, D)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        mean, std = pixel_normalization(backbone)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images.float() - self.mean) / self.std)


@dataclass
class EvalResult:
    """Probe accuracies (top-1, in [0, 1]) of one backbone on one labelled dataset."""

    source: str
    data: str
    image_size: int
    bank: int
    queries: int
    classes: int
    knn_top1: float | None
    linear_top1: float | None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def load_frozen(source: str | Path) -> tuple[nn.Module, int]:
    """The backbone of an export folder (``config.json`` + ``model.safetensors``) or of a
    checkpoint or run directory, with ``features(uint8 images)``, and the image size it was
    trained at.

    Raises:
        CheckpointError: neither an export nor a usable checkpoint.
    """
    path = Path(source)
    hub_file = path / "config.json"
    if hub_file.is_file() and (path / "model.safetensors").is_file():
        import timm

        hub = json.loads(hub_file.read_text())
        backbone = timm.create_model(
            hub["architecture"], pretrained=True, num_classes=0,
            pretrained_cfg_overlay=dict(file=str(path / "model.safetensors")),
            **hub.get("model_args", {}))
        pcfg = hub.get("pretrained_cfg", {})
        size = hub.get("lejepa", {}).get("image_size") or pcfg.get("input_size", [3, 224])[-1]
        return FrozenBackbone(backbone).eval(), int(size)
    trained = load_encoder(source)
    return trained.encoder.eval(), trained.spec.global_size


def evaluate(source: str | Path, data: str, probe: str = "both", *, size: int | None = None,
             max_samples: int = 5000, k: int = 20, temperature: float = 0.07) -> EvalResult:
    """kNN and/or linear top-1 accuracy of the frozen backbone at ``source`` on ``data`` (a
    source name such as ``digits``, an image folder or parquet shards).

    Raises:
        ValueError: an unknown probe, or data without labels of at least 2 classes.
        CheckpointError: ``source`` is neither an export nor a usable checkpoint.
    """
    from lejepa_ray.data.config import DataConfig
    from lejepa_ray.data.sources import source_from_arg
    from lejepa_ray.probe import embed, knn_accuracy, linear_accuracy, load_labelled

    if probe not in PROBES:
        raise ValueError(f"--probe must be one of {', '.join(PROBES)}, got {probe!r}.")
    model, trained_size = load_frozen(source)
    size = size or trained_size
    kind, path = source_from_arg(data)
    images = load_labelled(DataConfig(source=kind, path=path), size, max_samples)
    feats = embed(model, images.images)
    q = images.is_query
    knn = knn_accuracy(feats, images.labels, q, k, temperature) if probe != "linear" else None
    linear = linear_accuracy(feats, images.labels, q) if probe != "knn" else None
    return EvalResult(str(source), data, size, int((~q).sum()), int(q.sum()),
                      int(images.labels.unique().numel()), knn, linear)

