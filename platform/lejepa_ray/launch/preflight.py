"""Everything a run checks before it asks Ray for anything, and the rows it draws.

:func:`validate` is the driver's first step (:func:`lejepa_ray.launch.driver.run`): the config,
the trackers, the local GPUs, the data path, the probes' data, how the backbone takes the view
sizes and the storage folder, giving the validated :class:`Plan` the later steps follow.
:func:`check_resumable` compares the run's latest checkpoint with the model the config builds
(on the meta device), and :func:`check_epoch_holds_a_batch` the listed source with the rows one
step draws. So a config that cannot run fails in seconds, before Ray starts, rather than once
per worker retry.

:func:`run_rows` is the run's bound on the views stream the driver builds
(``lejepa_ray.data.stream.build_view_stream``), from the same rows per micro-batch
(:func:`drawn_per_micro_batch`) the check uses. None of it needs Ray running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lejepa_ray import runs, storage
from lejepa_ray.config import PretrainConfig, check_run
from lejepa_ray.data.batch_split import drawn_per_worker
from lejepa_ray.data.plan import Plan as DataPlan
from lejepa_ray.data.sources import check_path
from lejepa_ray.errors import SourceError
from lejepa_ray.launch import probes, runtime
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder, resolve_backbone
from lejepa_ray.train import checkpoint, trackers


@dataclass(frozen=True)
class Plan:
    """A validated run: its config, how the backbone takes the views, and where it goes."""

    cfg: PretrainConfig
    spec: BackboneSpec
    name: str
    """The run's name (``cfg.name`` or a dated default)."""
    root: str
    """The storage root, absolute when local."""

    @property
    def run_dir(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}"


def validate(cfg: PretrainConfig, print_fn: Callable[[str], None] = print) -> Plan:
    """Every check that needs no Ray: the config, the data path, the backbone's input sizes.

    Raises:
        ConfigError, SourceError: what is wrong and what to do.
    """
    check_run(cfg)
    trackers.check(cfg.logging)
    runtime.check_local_gpus(cfg.scaling)
    check_path(cfg.data)
    probes.check_data(cfg)
    spec = resolve_backbone(cfg)
    if spec.local_resized:
        print_fn(
            f"{cfg.model.name} takes no {cfg.data.views.local_size}px input; local views "
            f"are resized to {spec.local_size}px."
        )
    root = runs.storage_root(cfg)
    storage.check_output(root, "storage_path folder")
    return Plan(cfg, spec, runs.run_name(cfg), root)


def check_resumable(path: str, cfg: PretrainConfig, spec: BackboneSpec) -> None:
    """Raise CheckpointError when the run's latest checkpoint (at ``path``) does not fit the
    model ``cfg`` builds, before Ray starts (the workers would fail on it, once per retry).
    Compares the checkpoint's index with the model built on the meta device; reads the index
    and the state file only, wherever the checkpoint lies."""
    with torch.device("meta"):
        encoder = LeJEPAEncoder(spec, cfg.model)
    checkpoint.check_model(path, encoder, cfg.model.name)


def drawn_per_micro_batch(cfg: PretrainConfig) -> int:
    """Rows all ranks draw from the views stream per micro-batch, at the group size that draws
    the most (an elastic group's ranks round their shares up)."""
    s = cfg.scaling
    return max(
        drawn_per_worker(s.global_batch, w) * w for w in range(s.min_workers, s.max_workers + 1)
    )


READ_AHEAD_EXTRA = 1
"""Micro-batches a rank has pulled beyond the trainer's steps and ``data.prefetch_batches``
queued ones, at most: the one the prefetch thread holds while it waits to queue it. (Blocks
Ray Data buffers for ``iter_views`` are inside the pass and start nothing.)"""


def run_rows(cfg: PretrainConfig) -> int:
    """Rows the run takes from the views stream from step 0 to its last step, at most: the
    micro-batches it trains on, and those its ranks' prefetch has read ahead when it stops (a
    pass that ends before them would start the next pass, views for nothing)."""
    batches = cfg.optim.steps * cfg.optim.accum_steps
    batches += cfg.data.prefetch_batches + READ_AHEAD_EXTRA
    return batches * drawn_per_micro_batch(cfg)


def check_epoch_holds_a_batch(plan: DataPlan, cfg: PretrainConfig) -> None:
    """Refuse a source smaller than the rows one step draws (at any size of an elastic group):
    its batches would hold the same images twice (a pass runs on into the next epochs), which
    the objective does not expect."""
    s = cfg.scaling
    rows = plan.rows_per_epoch
    batch = drawn_per_micro_batch(cfg)
    if rows < batch:
        where = f"data.source={cfg.data.source}" + (
            f", data.path={cfg.data.path!r}" if cfg.data.path else ""
        )
        raise SourceError(
            f"{where} has {rows} samples in data.split={cfg.data.split}, fewer than the {batch} "
            f"a step draws (scaling.batch_size={s.batch_size} per worker, up to "
            f"{s.max_workers} workers): lower scaling.batch_size or add images."
        )
