"""``lejepa-ray eval``: frozen-feature probes of a checkpoint or an exported backbone.

The backbone's pooled features of labelled images, resized and centre-cropped to the size it
was trained at, go through the kNN and linear probes of :mod:`lejepa_ray.evaluation.probe`.
``features="projector"`` probes a checkpoint's projector outputs instead (what SIGReg shapes; the
backbone's features are what LeJEPA, like most SSL methods, keeps).
With ``val_data`` the probes are fitted on ``data`` and scored on ``val_data`` (protocol
``train/val``: an ImageNet-style ``train/`` and ``val/``, or ``digits:train`` and
``digits:val``); without it, on a hash 80/20 split of ``data``. ``baseline`` adds the same
probes on raw pixels of the same split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lejepa_ray.data.sources import data_from_arg
from lejepa_ray.errors import ConfigError, SourceError, check_field
from lejepa_ray.evaluation.config import ProbeConfig
from lejepa_ray.evaluation.export import FrozenBackbone, load_encoder
from lejepa_ray.evaluation.probe import load_labelled, probe_report
from lejepa_ray.model.encoder import LeJEPAEncoder

PROBES = ("knn", "linear", "both")
FEATURES = ("backbone", "projector")


class ProjectorOutputs(nn.Module):
    """A trained ``LeJEPAEncoder`` whose ``features`` are its projector's outputs
    ``(N, projector_dim)`` for uint8 images ``(N, 3, S, S)`` (BatchNorm on running statistics)."""

    def __init__(self, encoder: LeJEPAEncoder):
        super().__init__()
        self.encoder = encoder

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.embeddings(images)[1]


@dataclass
class EvalOptions:
    """Embed labelled images with the frozen backbone of a run, checkpoint or export (or a
    checkpoint's projector outputs), fit the probes on ``data`` and score them on ``val_data``
    (without it: on a hash 80/20 split of ``data``), and report kNN (cosine,
    temperature-weighted votes) and linear (logistic regression) top-1 accuracy."""

    source: str
    """A run or checkpoint directory, or an ``export`` folder; local or a URI."""
    data: str
    """Labelled data the probes are fitted on: ``digits``, ``synthetic``, an image folder
    (labels from subfolders) or parquet shards; a ``:train``, ``:val`` or ``:all`` suffix picks
    that split (``digits:train``)."""
    val_data: str | None = None
    """Labelled data the probes are scored on (the ``val/`` folder beside ``train/``, or
    ``digits:val``). None: a hash 80/20 split of ``data``."""
    probe: str = "both"
    """``knn``, ``linear`` or ``both``."""
    features: str = "backbone"
    """``backbone`` (pooled features, what ``export`` keeps) or, for a checkpoint,
    ``projector`` (its projector's outputs)."""
    baseline: bool = False
    """Also report the probes on raw pixels of the same split."""
    size: int | None = None
    """Image side in px. None: the size the backbone was trained at."""
    max_samples: int = ProbeConfig.max_samples
    """At most this many images from ``data`` (and from ``val_data``)."""
    k: int = ProbeConfig.k
    """kNN neighbours."""
    temperature: float = ProbeConfig.temperature
    """kNN vote temperature."""

    def __post_init__(self) -> None:
        check_field(self.probe in PROBES, "probe", self.probe, " or ".join(PROBES))
        check_field(self.features in FEATURES, "features", self.features, " or ".join(FEATURES))
        check_field(self.size is None or self.size >= 8, "size", self.size, ">= 8 px")
        check_field(self.max_samples >= 10, "max_samples", self.max_samples, ">= 10")
        check_field(self.k >= 1, "k", self.k, ">= 1")
        check_field(self.temperature > 0, "temperature", self.temperature, "> 0")


@dataclass
class EvalResult:
    """Probe accuracies (top-1, in [0, 1]) of one backbone on one labelled bank/query split."""

    source: str
    features: str
    """``backbone`` (pooled backbone features) or ``projector`` (projector outputs)."""
    data: str
    """Where the bank came from (the ``--data`` argument)."""
    val_data: str | None
    """Where the queries came from (None: from ``data``, by the hash split)."""
    protocol: str
    """``train/val`` or ``hash 80/20``."""
    preparation: str
    """How the features (and raw pixels) were prepared for the probes, the same for both."""
    image_size: int
    bank: int
    """Images the probes were fitted on."""
    queries: int
    """Images the probes were scored on."""
    classes: int
    knn_top1: float | None
    linear_top1: float | None
    raw_knn_top1: float | None = None
    """The kNN probe on raw pixels of the same split (None: no ``--baseline``)."""
    raw_linear_top1: float | None = None
    """The linear probe on raw pixels of the same split."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def load_frozen(
    source: str | Path, features: str = "backbone"
) -> tuple[FrozenBackbone | LeJEPAEncoder | ProjectorOutputs, int]:
    """The backbone of an export folder (``config.json`` + ``model.safetensors``) or of a
    checkpoint or run directory, with ``features(uint8 images)``, and the image size it was
    trained at. ``features="projector"`` (checkpoints only) makes ``features`` the projector's
    outputs.

    Raises:
        CheckpointError: neither an export nor a usable checkpoint.
        ValueError: ``features`` unknown, or ``projector`` asked of an export.
    """
    if features not in FEATURES:
        check_field(False, "features", features, f"one of {', '.join(FEATURES)}")
    path = Path(source)
    hub_file = path / "config.json"
    if hub_file.is_file() and (path / "model.safetensors").is_file():
        if features == "projector":
            raise ConfigError(
                f"{path} is an export, which loads as a timm backbone without its projector; "
                "to probe projector outputs, give the run or checkpoint directory instead."
            )
        # lazy: timm takes about a second to import; only loading an export needs it.
        import timm

        hub = json.loads(hub_file.read_text())
        backbone = timm.create_model(f"local-dir:{path.resolve()}", pretrained=True, num_classes=0)
        pcfg = hub.get("pretrained_cfg", {})
        size = hub.get("lejepa", {}).get("image_size") or pcfg.get("input_size", [3, 224])[-1]
        return FrozenBackbone(backbone).eval(), int(size)
    trained = load_encoder(source)
    model = trained.encoder if features == "backbone" else ProjectorOutputs(trained.encoder)
    return model.eval(), trained.spec.global_size


def evaluate(
    source: str | Path,
    data: str,
    probe: str = EvalOptions.probe,
    *,
    features: str = EvalOptions.features,
    val_data: str | None = EvalOptions.val_data,
    baseline: bool = EvalOptions.baseline,
    size: int | None = EvalOptions.size,
    max_samples: int = EvalOptions.max_samples,
    k: int = EvalOptions.k,
    temperature: float = EvalOptions.temperature,
) -> EvalResult:
    """kNN and/or linear top-1 accuracy of the frozen backbone at ``source`` (or of its
    projector outputs, ``features="projector"``), fitted on ``data`` and scored on ``val_data``
    (or on a hash split of ``data``). Both name a source (``digits``, ``digits:val``), an image
    folder or parquet shards.

    Raises:
        ValueError: an unknown probe or features, or data without labels of at least 2
            classes.
        CheckpointError: ``source`` is neither an export nor a usable checkpoint.
    """
    if probe not in PROBES:
        raise ConfigError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}.")
    model, trained_size = load_frozen(source, features)
    size = size or trained_size

    # Generated sources render at any size: at the probe's, as training did.
    try:
        queries = data_from_arg(val_data, size) if val_data else None
    except SourceError as e:  # said of `data`: here the argument is val_data
        raise e.said_of("val_data") from None
    images = load_labelled(data_from_arg(data, size), size, max_samples, queries)
    cfg = ProbeConfig(k=k, temperature=temperature, linear=probe != "knn", baseline=baseline)
    report = probe_report(model, images, cfg)
    knn: float | None = report.trained.knn_top1
    linear = report.trained.linear_top1
    raw_knn, raw_linear = (
        (report.raw.knn_top1, report.raw.linear_top1) if report.raw else (None, None)
    )
    if probe == "linear":  # kNN costs nothing beside it, but was not asked for
        knn = raw_knn = None
    return EvalResult(
        str(source),
        features,
        data,
        val_data,
        report.protocol,
        report.preparation,
        size,
        report.bank,
        report.queries,
        report.classes,
        knn,
        linear,
        raw_knn,
        raw_linear,
    )
