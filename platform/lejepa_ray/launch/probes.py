"""Probes during training: kNN (and linear) top-1 of checkpoints, off the training workers.

With ``probe.every_steps: N`` the workers report every N-th step's checkpoint for validation,
and Ray Train runs :class:`CheckpointProbe` on it as a Ray task of its own (``probe.resources``)
while they train on. Each probe writes its figures to ``probes/step_<step>.json`` in the run
directory (where the driver and sweeps read them, whichever checkpoints are kept), and to
TensorBoard at the checkpoint's step (``tensorboard/probes/``); Ray also attaches them to that
checkpoint's metrics in its registry:

- ``probe/knn_top1``, and ``probe/linear_top1`` when ``probe.linear``: the trained backbone's
  accuracy on the probe data (``probe.data``/``probe.val_data``, or the training source's
  protocol, as after training);
- ``probe/failed`` = 1 when it could not run (a bad data path, an unreadable checkpoint): the
  reason goes to the task's log and TensorBoard's text tab, and training is not disturbed.

Baselines (raw pixels, random init) do not change during a run; the probes after training give
them once. Ray Train's checkpoint validation is alpha: this module is the only one that uses
it (:func:`validation_config`, :func:`report_kwargs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
import time
from typing import Any

import torch
from ray.train import Checkpoint, ValidationConfig, ValidationTaskConfig
from torch.utils.tensorboard import SummaryWriter

from lejepa_ray import storage
from lejepa_ray.config import PretrainConfig
from lejepa_ray.data.sources import check_path, class_names, data_from_arg
from lejepa_ray.errors import ConfigError, SourceError
from lejepa_ray.evaluation.probe import LabelledImages, load_labelled, probe_report
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder
from lejepa_ray.train import checkpoint
from lejepa_ray.train.metrics import TENSORBOARD_DIR
from lejepa_ray.train.rankme import heldout_data

log = logging.getLogger(__name__)

PROBES_DIR = "probes"
"""In the run directory, the probes' ``step_<step>.json``; under its ``tensorboard/``, their
event files."""


@dataclasses.dataclass(frozen=True)
class CheckpointProbe:
    """Ray Train's validation function: the probes of one reported checkpoint (pickled to each
    task; everything it needs travels in it)."""

    cfg: PretrainConfig
    spec: BackboneSpec
    run_dir: str

    def __call__(self, ckpt: Checkpoint, step: int = 0) -> dict[str, float]:
        start = time.perf_counter()
        torch.set_num_threads(max(1, int(self.cfg.probe.resources.get("CPU", 1))))
        error = None
        try:
            metrics = self.probe(storage.uri_of(ckpt.filesystem, ckpt.path))
            metrics["probe/seconds"] = time.perf_counter() - start
        except Exception as e:  # reported, not raised: training goes on without this probe
            error = f"{type(e).__name__}: {e}"
            log.error("the probe of step %d failed: %s", step, error)
            metrics = {"probe/failed": 1.0}
        try:
            self._keep(step, metrics, error)
        except Exception as e:  # the figures still reach Ray's registry, the return below
            log.error("the probe of step %d could not be written down: %s", step, e)
        return {**metrics, "probe/step": float(step)}

    def probe(self, uri: str) -> dict[str, float]:
        """kNN (and linear) top-1 of the backbone in the checkpoint at ``uri``."""
        encoder = LeJEPAEncoder(self.spec, self.cfg.model)
        checkpoint.load_model_weights(uri, encoder)
        # On the GPU when probe.resources reserved one (Ray then makes it the visible one).
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        probe = dataclasses.replace(self.cfg.probe, baseline=False)
        report = probe_report(_OnDevice(encoder.to(device), device), self.labelled(), probe)
        out = {"probe/knn_top1": report.trained.knn_top1}
        if report.trained.linear_top1 is not None:
            out["probe/linear_top1"] = report.trained.linear_top1
        return out

    def labelled(self) -> LabelledImages:
        """The bank and queries: ``probe.data``/``probe.val_data``, or by default what the
        probes after training use (the val split of a run on ``data.split=train``)."""
        p, size = self.cfg.probe, self.spec.global_size
        if p.data is None:
            held, held_out = heldout_data(self.cfg.data)
            return load_labelled(self.cfg.data, size, p.max_samples, held if held_out else None)
        val = data_from_arg(p.val_data, size) if p.val_data else None
        return load_labelled(data_from_arg(p.data, size), size, p.max_samples, val)

    def _keep(self, step: int, metrics: dict[str, float], error: str | None = None) -> None:
        """``probes/step_<step>.json`` in the run directory, and the scalars (and a failure's
        reason) at ``step`` in ``tensorboard/probes/``."""
        record = {"step": step, **metrics, **({"error": error} if error else {})}
        storage.write_text(_record_uri(self.run_dir, step), json.dumps(record))
        where = f"{self.run_dir.rstrip('/')}/{TENSORBOARD_DIR}/{PROBES_DIR}"
        if storage.is_local(where):
            _tensorboard(where.removeprefix("file://"), step, metrics, error)
            return
        with tempfile.TemporaryDirectory(prefix="lejepa-probe-") as local:
            _tensorboard(local, step, metrics, error)
            storage.upload(local, where)


class _OnDevice(torch.nn.Module):
    """The encoder's ``features`` on ``device``, taking and giving CPU tensors (what the probes'
    ``embed`` calls)."""

    def __init__(self, encoder: LeJEPAEncoder, device: torch.device):
        super().__init__()
        self.encoder, self.device = encoder, device

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.features(images.to(self.device)).float().cpu()


def _tensorboard(folder: str, step: int, metrics: dict[str, float], error: str | None) -> None:
    with SummaryWriter(folder) as writer:
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
        if error is not None:
            writer.add_text("probe/error", error, step)


def check_data(cfg: PretrainConfig) -> None:
    """Before Ray starts: the probe data of ``probe.every_steps`` exists and, when it is the
    training source, has labels.

    Raises:
        SourceError: ``probe.data`` or ``probe.val_data`` names a path that does not exist.
        ConfigError: no ``probe.data`` and a training source without labels.
    """
    if not cfg.probe.every_steps:
        return
    for key, arg in (("probe.data", cfg.probe.data), ("probe.val_data", cfg.probe.val_data)):
        if arg is None:
            continue
        try:
            check_path(data_from_arg(arg))
        except SourceError as e:  # said of `data`, as the eval command takes it
            raise e.said_of(key) from None
    if cfg.probe.data is None and class_names(cfg.data) is None:
        raise ConfigError(
            f"probe.every_steps={cfg.probe.every_steps} probes with labels, and "
            f"data.source={cfg.data.source} has none here; set probe.data to labelled images "
            "(an image folder of class subfolders, digits:train), or probe.every_steps=0."
        )


def validation_config(cfg: PretrainConfig, spec: BackboneSpec, run_dir: str) -> Any:
    """Ray Train's ``ValidationConfig`` for the run, or None when it probes only at the end."""
    if not cfg.probe.every_steps:
        return None
    resources = dict(cfg.probe.resources)
    remote: dict[str, Any] = {
        "num_cpus": resources.pop("CPU", 0),
        "num_gpus": resources.pop("GPU", 0),
    }
    if resources:
        remote["resources"] = resources
    # Ray calls fn(checkpoint, **fn_kwargs): the checkpoint positionally, and no keyword but
    # report_kwargs' step=; its ValidationFn Protocol types a `checkpoint` and any keyword.
    probe = CheckpointProbe(cfg, spec, run_dir)
    return ValidationConfig(probe, ray_remote_kwargs=remote)  # type: ignore[arg-type]


def report_kwargs(cfg: PretrainConfig, step: int) -> dict[str, Any]:
    """What ``ray.train.report`` takes, beside the checkpoint, to have ``step``'s probed."""
    every = cfg.probe.every_steps
    if not every or step % every:
        return {}
    timeout = cfg.probe.timeout_s or None
    return {"validation": ValidationTaskConfig(fn_kwargs={"step": step}, timeout_s=timeout)}


def probe_of(checkpoint_uri: str) -> dict[str, Any] | None:
    """The record of the probe during training of the checkpoint at ``checkpoint_uri``
    (``.../<run>/checkpoint_<step>``), or None when that step was not probed (or failed)."""
    run_dir, _, name = checkpoint_uri.rstrip("/").rpartition("/")
    match = re.fullmatch(r"checkpoint_(\d+)(_\d+)?", name)
    record = _read_record(_record_uri(run_dir, int(match.group(1)))) if match else None
    return None if record is None or "error" in record else record


def read_probes(run_dir: str) -> dict[int, dict[str, Any]]:
    """The probes during training of the run at ``run_dir``, by step ({} when none ran)."""
    where = f"{run_dir.rstrip('/')}/{PROBES_DIR}"
    names = sorted(n for n in storage.Folder.at(where).files() if n.endswith(".json"))
    records = [_read_record(f"{where}/{name}") for name in names]
    return {int(r["step"]): r for r in records if r is not None}


def _record_uri(run_dir: str, step: int) -> str:
    return f"{run_dir.rstrip('/')}/{PROBES_DIR}/step_{step:08d}.json"


def _read_record(uri: str) -> dict[str, Any] | None:
    """The probe record at ``uri``; None when there is none or it is unreadable (a write cut
    short, which is logged: the other records still count)."""
    text = storage.read_text(uri)
    if text is None:
        return None
    try:
        record = json.loads(text)
        int(record["step"])
    except (ValueError, KeyError, TypeError) as e:
        log.warning("probe record %s is unreadable (%s); left out", uri, e)
        return None
    return dict(record)
