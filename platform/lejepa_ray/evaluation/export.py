"""Export a run's backbone as an ordinary timm model, in timm's own hub layout.

``OUT_DIR`` gets:

- ``model.safetensors`` and ``config.json`` (``architecture``, ``model_args``,
  ``pretrained_cfg``), written by timm's ``save_for_hf``, so the backbone loads with::

      timm.create_model("local-dir:OUT_DIR", pretrained=True, num_classes=0)

  ``pretrained_cfg`` describes this run, not the architecture's ImageNet weights: the input
  size it was trained at, the mean and std the encoder normalized with, and the preprocessing
  ``eval`` uses (bilinear resize of the short side, centre crop, ``crop_pct`` 1), so that
  ``timm.data.resolve_data_config({}, model=model)`` gives the run's preprocessing. No tag,
  licence or source of another training is kept;

- ``projector.safetensors``: the LeJEPA projector (not part of the backbone);
- ``lejepa.yaml``: the training config, for provenance;
- with ``format="onnx"``, also ``model.onnx``: uint8 images ``images`` (N, 3, S, S) ->
  ``features`` (N, D) float32, normalization inside and any batch size, written by torch's
  exporter and checked against PyTorch with onnxruntime on the spot (``ONNX_TOLERANCE``; the
  measured difference goes into ``config.json``). Needs the ``onnx`` extra.

Sharded checkpoints (any world size, DDP or FSDP) are consolidated in this one process by DCP.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lejepa_ray import runs, storage
from lejepa_ray.config import ConfigError, PretrainConfig, load_config
from lejepa_ray.errors import ExportError, first_line, option
from lejepa_ray.model.encoder import (
    BackboneSpec,
    LeJEPAEncoder,
    pixel_normalization,
    resolve_backbone,
)
from lejepa_ray.storage import is_local
from lejepa_ray.train import checkpoint
from lejepa_ray.train.checkpoint import CheckpointError

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
FORMATS = ("timm", "onnx")
ONNX_TOLERANCE = 1e-4
"""Largest |ONNX - PyTorch| accepted on an export's features, relative to their largest |value|
(at least 1): float32 kernels differ in their summation order, not more."""
PROJECTOR_FILE = "projector.safetensors"
TRAINING_CONFIG_FILE = "lejepa.yaml"


@dataclass
class ExportOptions:
    """Consolidate a checkpoint (DDP or FSDP shards, any world size) and write its backbone in
    timm's hub layout, loadable with ``timm.create_model('local-dir:OUT_DIR', pretrained=True,
    num_classes=0)``, its ``pretrained_cfg`` describing the run's input size and
    normalization; the projector goes to ``projector.safetensors`` beside it."""

    source: str
    """A run directory (its latest checkpoint) or a checkpoint directory; a local path or a
    URI (``s3://...``), read in place."""
    out_dir: str
    """Output folder, a local path or a URI (``s3://...``)."""
    format: str = "timm"
    """``timm`` (timm's hub layout) or ``onnx`` (that plus ``model.onnx``, checked against
    PyTorch with onnxruntime; the ``onnx`` extra)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}.")


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    out_dir: str
    """The export folder (a local path or URI)."""
    checkpoint: str
    """The checkpoint exported (the latest of a run directory), a local path or URI."""
    step: int
    architecture: str
    model_args: dict
    """Keyword arguments for ``timm.create_model`` besides ``num_classes=0``."""
    parameters: int
    """Backbone parameters."""
    onnx_max_abs_diff: float | None = None
    """With ``format="onnx"``: the largest |ONNX - PyTorch| on the parity check's features."""

    def load_line(self) -> str:
        """The ``timm.create_model`` call that loads the exported backbone (from a local copy
        when the export went to a URI: timm reads ``local-dir:`` from a local folder)."""
        if is_local(self.out_dir):
            where = str(Path(self.out_dir.removeprefix("file://")).resolve())
        else:
            where = "A_LOCAL_COPY_OF_" + self.out_dir.rstrip("/").rsplit("/", 1)[-1]
        return f"timm.create_model('local-dir:{where}', pretrained=True, num_classes=0)"


@dataclass
class TrainedEncoder:
    """A checkpoint's encoder (backbone + projector), unsharded, in this process."""

    checkpoint: str
    """The checkpoint's local path or URI."""
    cfg: PretrainConfig
    config_yaml: str
    """The training config as saved in the checkpoint."""
    spec: BackboneSpec
    encoder: LeJEPAEncoder
    step: int


def load_encoder(run_or_checkpoint: str | Path) -> TrainedEncoder:
    """The encoder of a checkpoint (or of a run directory's latest checkpoint), built from the
    checkpoint's own config and loaded in one process.

    Raises:
        CheckpointError: no checkpoint there, or an incomplete, corrupt or foreign one.
    """
    path = runs.find(run_or_checkpoint)
    config_yaml = checkpoint.read_config(path)
    try:
        with tempfile.TemporaryDirectory(prefix="lejepa-export-") as tmp:
            Path(tmp, checkpoint.CONFIG_FILE).write_text(config_yaml)
            cfg = load_config(Path(tmp, checkpoint.CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(
            f"{path} has no usable {checkpoint.CONFIG_FILE} ({e}); it is "
            "incomplete or not a lejepa-ray checkpoint."
        ) from None
    spec = resolve_backbone(cfg)
    encoder = LeJEPAEncoder(spec, cfg.model)
    step = checkpoint.load_model_weights(path, encoder)
    return TrainedEncoder(path, cfg, config_yaml, spec, encoder, step)


def export(
    run_or_checkpoint: str | Path, out_dir: str | Path, format: str = ExportOptions.format
) -> ExportResult:
    """Write the backbone of a checkpoint (or of a run directory's latest checkpoint) to
    ``out_dir`` in timm's hub layout, the projector beside it. Either side may be a local path
    or a URI (``s3://...``): a remote checkpoint is read in place (the model's tensors only),
    and a remote ``out_dir`` is written locally, then uploaded.

    Raises:
        CheckpointError: no checkpoint there, or an incomplete, corrupt or foreign one.
        ConfigError: an unknown format, the ``onnx`` extra missing, or a local ``out_dir`` that
            cannot be created or written.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    if format == "onnx":
        _check_onnx_installed()
    found = runs.find(run_or_checkpoint)  # a missing checkpoint leaves no empty out_dir
    storage.check_output(str(out_dir), "export folder")  # before the model is loaded
    trained = load_encoder(found)

    if not is_local(str(out_dir)):
        with tempfile.TemporaryDirectory(prefix="lejepa-export-") as tmp:
            result = _export(trained, Path(tmp), format)
            storage.upload(tmp, str(out_dir))
        result.out_dir = str(out_dir)
        return result
    return _export(trained, Path(str(out_dir).removeprefix("file://")), format)


FOREIGN_KEYS = (
    "tag",
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "license",
    "origin_url",
    "paper_ids",
    "paper_name",
    "notes",
    "test_input_size",
    "test_crop_pct",
    "pool_size",
    "test_pool_size",
)
"""``pretrained_cfg`` fields that describe the architecture's published weights, not this run
(where they came from, under which licence, at which test-time sizes)."""


def run_pretrained_cfg(written: dict, trained: TrainedEncoder) -> dict:
    """timm's ``pretrained_cfg`` as ``save_for_hf`` wrote it, rewritten to describe the run:
    its input size (the global views' side, px), the encoder's normalization (mean and std on
    the 0-1 scale), and ``eval``'s preprocessing (bilinear, centre crop, ``crop_pct`` 1)."""
    cfg = {k: v for k, v in written.items() if k not in FOREIGN_KEYS}
    size = trained.spec.global_size
    cfg.update(
        input_size=[3, size, size],
        mean=[round(float(m) / 255.0, 6) for m in trained.encoder.mean.flatten()],
        std=[round(float(s) / 255.0, 6) for s in trained.encoder.std.flatten()],
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="center",
        num_classes=0,
    )
    return cfg


def _export(trained: TrainedEncoder, out: Path, format: str = "timm") -> ExportResult:
    # lazy: timm takes about a second to import; only writing an export needs it.
    from timm.models import save_for_hf

    path, spec, step = trained.checkpoint, trained.spec, trained.step
    backbone = trained.encoder.backbone.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(backbone, str(out), model_args=dict(spec.kwargs), safe_serialization=True)
    hub = json.loads((out / "config.json").read_text())
    hub["pretrained_cfg"] = run_pretrained_cfg(hub["pretrained_cfg"], trained)
    # num_classes is already a top-level field, and callers pass num_classes=0 themselves.
    hub["model_args"] = {k: v for k, v in hub.get("model_args", {}).items() if k != "num_classes"}
    hub["lejepa"] = {
        "step": step,
        "checkpoint": path,
        "image_size": spec.global_size,
        "projector": PROJECTOR_FILE,
        "training_config": TRAINING_CONFIG_FILE,
    }
    (out / "config.json").write_text(json.dumps(hub, indent=2))
    save_file(
        {k: v.contiguous() for k, v in trained.encoder.projector.state_dict().items()},
        str(out / PROJECTOR_FILE),
        metadata={"format": "pt"},
    )
    (out / TRAINING_CONFIG_FILE).write_text(trained.config_yaml)
    diff = None
    if format == "onnx":  # last: a model the exporter cannot take still leaves a whole export
        diff = export_onnx(backbone, trained.spec.global_size, out / ONNX_FILE)
        hub["lejepa"]["onnx"] = {"file": ONNX_FILE, "max_abs_diff": diff}
        (out / "config.json").write_text(json.dumps(hub, indent=2))
    return ExportResult(
        str(out),
        path,
        step,
        hub["architecture"],
        hub["model_args"],
        sum(p.numel() for p in backbone.parameters()),
        diff,
    )


def _check_onnx_installed() -> None:
    """Raise ConfigError, before any work, when the ``onnx`` extra is not installed."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not importlib.util.find_spec(m)]
    if missing:
        raise ConfigError(
            f"export {option('format')}=onnx needs {', '.join(missing)}: pip install "
            "'lejepa-ray[onnx]'."
        )


class FrozenBackbone(nn.Module):
    """A backbone taking uint8 images, normalized as in training (``LeJEPAEncoder``):
    ``features((N, 3, S, S) uint8) -> (N, D)``; ``forward`` is the same (what ``model.onnx``
    computes)."""

    # Buffers registered in __init__, declared for the type checker (as in LeJEPAEncoder).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        mean, std = pixel_normalization(backbone)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images.float() - self.mean) / self.std)

    features = forward


def export_onnx(backbone: nn.Module, size: int, path: Path, seed: int = 0) -> float:
    """Write ``backbone`` as ONNX (uint8 ``images`` (N, 3, size, size) -> ``features``), then
    run both on 8 random images and return the largest |ONNX - PyTorch|.

    Raises:
        ExportError: torch's exporter cannot take the model, or the difference passes
            ``ONNX_TOLERANCE`` (kept with its figures rather than shipped).
    """
    # lazy: onnxruntime and torch's exporter take seconds to import; only this format needs them.
    import onnxruntime

    model = FrozenBackbone(backbone).eval()
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
            verbose=False,
        )
    except Exception as e:  # torch's own report; the timm export beside it stays usable
        raise ExportError(
            f"torch's ONNX exporter could not export {type(backbone).__name__} "
            f"({first_line(e)}); the "
            f"timm export in {path.parent} is complete without model.onnx."
        ) from e
    images = torch.randint(
        0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    with torch.inference_mode():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    diff = float(abs(got - expected).max())
    if diff > ONNX_TOLERANCE * max(1.0, float(abs(expected).max())):
        raise ExportError(
            f"the ONNX export of {path.parent} differs from PyTorch by {diff:.2e} on its "
            f"features, more than {ONNX_TOLERANCE:g} of their scale; report it with the model."
        )
    return diff
