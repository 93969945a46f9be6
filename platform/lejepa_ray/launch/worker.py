"""One Ray Train worker of a pretraining run: build the trainer, resume, fit.

:func:`train_worker` is what ``TorchTrainer`` runs on every rank. It reads like its steps:
place the rank, build the :class:`~lejepa_ray.train.trainer.Trainer`, resume from the run's
latest checkpoint (:func:`resume`), open the data cursor where that checkpoint left the data,
then hand the loop to :func:`~lejepa_ray.train.trainer.fit` with a
:class:`~lejepa_ray.launch.reporter.Reporter`, which sends metrics to Ray Train and assembles
each checkpoint (:mod:`lejepa_ray.launch.reporter`). :class:`WorkerConfig` is what the driver
hands every worker (:func:`lejepa_ray.launch.torch_trainer.build`).

Ray is imported at the top: this module only ever runs inside a Ray Train worker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import ray.actor
import ray.train
import ray.train.torch
import torch
import yaml

from lejepa_ray import runs, storage
from lejepa_ray.compat import ray_train_report_logger
from lejepa_ray.config import PretrainConfig, to_yaml
from lejepa_ray.data.batch_split import batch_share, batch_split, drawn_per_worker
from lejepa_ray.data.feed import EpochCursor
from lejepa_ray.errors import CheckpointError
from lejepa_ray.launch import events
from lejepa_ray.launch.reporter import Reporter
from lejepa_ray.model.encoder import BackboneSpec
from lejepa_ray.model.flops import peak_tflops
from lejepa_ray.train import checkpoint, checkpoint_read, trackers, tracking
from lejepa_ray.train.checkpoint import TrainState
from lejepa_ray.train.faults import inject_nonfinite
from lejepa_ray.train.metrics import MetricsWriter
from lejepa_ray.train.trainer import NonFiniteLossError, Trainer, fit

log = logging.getLogger(__name__)

WORKER_CONFIG = "worker"
"""The key of :class:`WorkerConfig` in Ray Train's ``train_loop_config``."""


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a run gets from the driver (pickled once per attempt)."""

    cfg: PretrainConfig
    """The run's validated config."""
    spec: BackboneSpec
    """How the backbone takes the view sizes, resolved by the driver."""
    counter: ray.actor.ActorHandle
    """The run's ``SkipCounter`` actor: samples the pipeline skipped, by reason."""
    rows_per_epoch: int
    """Rows in one epoch of the source's plan (``ViewStream.plan``)."""
    epochs_per_pass: int
    """Epochs one execution of the pipeline streams (``ViewStream.epochs_per_pass``)."""
    run_dir: str
    """The run directory (local path or URI): checkpoints, TensorBoard, markers."""
    flops_per_image: float
    """Training FLOPs per image (forward and backward, all views), for MFU."""
    progress_lines: bool = True
    """Log the progress line at INFO (the console's level); False when the driver draws a
    live bar instead (``launch.progress``): then at DEBUG, in the worker's log file only."""


@dataclass
class Resumed:
    """The checkpoint a worker group resumed from (the same on every rank)."""

    uri: str
    state: TrainState
    seconds: float
    """Wall time of the load on this rank."""
    bytes_read: list[int]
    """Bytes each rank fetched for it, by rank."""
    bytes_total: int
    """The checkpoint's size in bytes."""


def train_worker(config: dict) -> None:
    """Ray Train's entry point: one data-parallel rank of the run, resumed from the latest
    checkpoint when there is one. ``config[WORKER_CONFIG]`` is the :class:`WorkerConfig`."""
    job: WorkerConfig = config[WORKER_CONFIG]
    # Ray Train logs each report, with all its metrics, from every rank at INFO, on a logger
    # named after its source file that LoggingConfig does not reach; our progress line says it.
    logging.getLogger(ray_train_report_logger()).setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.cfg.scaling.cpus_per_worker)))

    scaling = job.cfg.scaling
    if not scaling.min_workers <= world <= scaling.max_workers:  # Ray Train keeps to the range
        raise ValueError(f"world size {world} outside scaling.num_workers={scaling.num_workers}")
    batch = scaling.global_batch
    trainer = Trainer(job.cfg, job.spec, device, batch_share(batch, rank, world))
    inject_nonfinite(trainer, job.cfg.fault.inject_nonfinite_steps)  # drills only
    resumed, taken = resume(trainer, job.run_dir, rank)
    state = resumed.state if resumed else TrainState(step=0)
    cursor = EpochCursor(
        job.counter,
        job.cfg.data,
        drawn_per_worker(batch, world),
        world,
        job.rows_per_epoch,
        job.epochs_per_pass,
        state.data_epoch,
        state.data_samples,
        prefetch=job.cfg.data.prefetch_batches,
        keep=batch_split(batch, world)[rank],
    )
    writer = _metrics_writer(job, resumed) if rank == 0 else None
    # Only an elastic group resizes; a fixed one rerun on another size says so in the resume log.
    elastic = job.cfg.scaling.elastic
    if rank == 0 and elastic and resumed is not None and resumed.state.world_size != world:
        _record_resize(job, resumed.state, world)
    failed = True  # until fit returns: the tracking runs of a failed attempt say so
    try:
        reporter = Reporter(job, trainer, cursor, writer, resumed, taken, world)
        fit(
            trainer,
            iter(cursor),
            report=reporter,
            flops_per_image=job.flops_per_image,
            peak_tflops=peak_tflops(device, job.cfg.logging.peak_tflops),
            world_size=world,
            checkpoint_now=reporter.preempted,
        )
        failed = False
    except NonFiniteLossError as e:
        # Every rank raises at the same step (the finiteness flag is all-reduced). Ending the
        # attempt normally, rather than failing it, keeps Ray from restarting into the same
        # divergence; the driver reads the marker and reports it.
        if rank == 0:
            storage.write_text(
                f"{job.run_dir}/{runs.STOPPED_FILE}",
                json.dumps({"step": trainer.step, "message": str(e)}),
            )
            log.error("%s", e)
    finally:
        if writer is not None:
            writer.close(failed)


def resume(trainer: Trainer, run_dir: str, rank: int) -> tuple[Resumed | None, set[str]]:
    """Load the run's latest complete checkpoint into ``trainer`` (every rank): what it was,
    or None for a fresh start; and the names of every checkpoint Ray Train registered for the
    run, which a step saved again must not reuse.

    A checkpoint that fails verification while it loads (a changed byte) is marked refused and
    the attempt fails, so that Ray Train restarts the workers, and the data pipeline, from the
    previous complete checkpoint (counted in ``fault.max_failures``)."""
    if ray.train.get_checkpoint() is None:
        return None, set()
    entries = runs.registered(run_dir)
    taken = {folder.name() for folder, _ in entries}
    latest = runs.first_complete(entries)
    if latest is None:
        return None, taken
    start, stats = time.perf_counter(), dict[str, int]()
    try:
        state = checkpoint.load(
            latest.opened, trainer.tensors, model_name=trainer.cfg.model.name, stats=stats
        )
    except CheckpointError as e:
        if rank == 0:
            checkpoint_read.refuse(latest.uri, str(e))
        raise CheckpointError(
            f"{e} It is marked refused; the restarted workers resume from the checkpoint "
            "before it (rerun the same command if the run has no restarts left)."
        ) from None
    trainer.restore(state)
    seconds = time.perf_counter() - start
    bytes_read = [stats["bytes_read"]]
    if torch.distributed.is_initialized():  # what each rank fetched, for rank 0 to log
        bytes_read = [0] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(bytes_read, stats["bytes_read"])
    return Resumed(latest.uri, state, seconds, bytes_read, stats["bytes_total"]), taken


def _metrics_writer(job: WorkerConfig, resumed: Resumed | None) -> MetricsWriter:
    """Rank 0's TensorBoard writer, tracking and progress line; a resume is logged with its
    figures. The tracking runs are the checkpoint's, else those an attempt that failed before
    its first checkpoint opened (``tracking.json``), else new ones."""
    step = resumed.state.step if resumed else None
    ids = resumed.state.tracking if resumed else tracking.read_ids(job.run_dir)
    config_yaml = to_yaml(job.cfg)
    run = trackers.RunInfo(
        job.run_dir, _run_name(job.run_dir), yaml.safe_load(config_yaml), config_yaml
    )
    tracked = tracking.Tracking(job.cfg.logging, run, ids, resumed_step=step)
    writer = MetricsWriter(
        job.run_dir,
        job.cfg.optim.steps,
        resumed_step=step,
        tracking=tracked,
        line_level=logging.INFO if job.progress_lines else logging.DEBUG,
    )
    if resumed is not None:
        state = resumed.state
        writer.resumed(state.step, resumed.seconds, resumed.bytes_read, resumed.bytes_total)
        log.warning(
            "resumed from %s: step %d, data epoch %d (+%d samples), written by %d rank(s), "
            "loaded in %.1f s; rank(s) read %s of %.1f MB",
            resumed.uri,
            state.step,
            state.data_epoch,
            state.data_samples,
            state.world_size,
            resumed.seconds,
            "/".join(f"{b / 1e6:.1f}" for b in resumed.bytes_read),
            resumed.bytes_total / 1e6,
        )
    return writer


def _run_name(run_dir: str) -> str:
    """The run's name: the last part of its directory (``storage_path/name``)."""
    return run_dir.rstrip("/").rsplit("/", 1)[-1]


def _record_resize(job: WorkerConfig, state: TrainState, world: int) -> None:
    """Log and keep (``resizes.jsonl``) that this group resumed on another number of workers
    than the checkpoint's; the global batch is the same, split ``global / world`` per worker."""
    record = events.record_resize(job.run_dir, state.step, state.world_size, world)
    split = batch_split(job.cfg.scaling.global_batch, world)
    per_worker = str(split[0]) if split[0] == split[-1] else f"{split[-1]}-{split[0]}"
    log.warning(
        "worker group resized from %d to %d at step %d (%s); %s images per worker, global "
        "batch %d as before",
        state.world_size,
        world,
        state.step,
        record["cause"],
        per_worker,
        job.cfg.scaling.global_batch,
    )
