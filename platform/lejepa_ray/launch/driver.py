"""The pretraining job: validate, connect to Ray, stream views into Ray Train workers, probe.

``run(cfg)`` is what ``lejepa-ray pretrain`` and ``jobs/pretrain.py`` call. The driver checks
the whole config (including that the backbone takes the view sizes) before asking Ray for
anything, builds the Ray Data stream, runs a ``TorchTrainer`` whose workers execute
:func:`train_worker`, then loads the final checkpoint in the driver for the kNN probe.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lejepa_ray import storage
from lejepa_ray.compat import ray_train_report_logger
from lejepa_ray.config import ConfigError, PretrainConfig, check_run, to_yaml
from lejepa_ray.data.sources import check_path
from lejepa_ray.errors import TrainingStopped
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder, resolve_backbone
from lejepa_ray.storage import is_local
from lejepa_ray.train import checkpoint
from lejepa_ray.train.metrics import MetricsWriter

if TYPE_CHECKING:
    from lejepa_ray.evaluate.probe import ProbeReport

log = logging.getLogger(__name__)

STOPPED_FILE = "stopped.json"
"""Written into the run directory when training stopped on non-finite losses."""
RESUMED_FROM = "resumed_from"
"""Reported by workers that resumed: the step of the checkpoint their attempt loaded."""


@dataclass
class PretrainResult:
    """Where a finished run put its outputs, and how it did."""

    run_dir: str
    """The run directory (storage_path/name): config.yaml, tensorboard/, checkpoints."""
    checkpoint: str | None
    """The final checkpoint's directory (a local path or URI)."""
    metrics: dict[str, float]
    """The last metrics reported (with the final checkpoint)."""
    probe: ProbeReport | None
    """The probes of the final backbone beside random init and raw pixels (None: no probe)."""
    train_seconds: float
    """Wall time of ``TorchTrainer.fit``."""
    resumed_from: int | None = None
    """The step of the checkpoint the run resumed from, as its workers' last attempt loaded it
    (None: this command started the run afresh)."""


def run_name(cfg: PretrainConfig) -> str:
    """``cfg.name``, or ``lejepa-<model>-<YYYYmmdd-HHMMSS>``."""
    return cfg.name or f"lejepa-{cfg.model.name}-{datetime.now():%Y%m%d-%H%M%S}"


def storage_root(cfg: PretrainConfig) -> str:
    """``cfg.storage_path`` made absolute when it is a local path."""
    return (
        cfg.storage_path
        if not is_local(cfg.storage_path)
        else str(Path(cfg.storage_path.removeprefix("file://")).expanduser().resolve())
    )


def run(cfg: PretrainConfig, *, print_fn=print, callbacks: Sequence = ()) -> PretrainResult:
    """Pretrain with ``cfg`` on the connected (or a new local) Ray cluster; then probe.

    ``callbacks``: Ray Train ``UserCallback`` objects for the run (a sweep forwards every
    report to Tune with one).

    A run whose directory (``storage_path/name``) already has a checkpoint resumes from the
    latest one: step, LR schedule, data position, optimizer and RNG states, on any number of
    workers. Workers that fail are restarted from the latest checkpoint up to
    ``fault.max_failures`` times.

    Raises:
        ConfigError: before any Ray resource is requested, for a config that cannot run.
        CheckpointError: before Ray starts, when the run's latest checkpoint holds another
            model than the config builds.
        TrainingStopped: too many consecutive non-finite steps; the last good checkpoint
            stays, and rerunning resumes from it.
    """
    check_run(cfg)
    check_path(cfg.data)
    spec = resolve_backbone(cfg)
    if spec.local_resized:
        print_fn(
            f"{cfg.model.name} takes no {cfg.data.views.local_size}px input; local views "
            f"are resized to {spec.local_size}px."
        )

    from ray.data import DataContext
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        WorkerGroupError,
    )
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchTrainer

    from lejepa_ray.data.stream import build_view_stream
    from lejepa_ray.launch.runtime import connect
    from lejepa_ray.model.flops import train_flops_per_image

    name, root = run_name(cfg), storage_root(cfg)
    run_dir = f"{root.rstrip('/')}/{name}"
    latest = checkpoint.latest_checkpoint(run_dir)
    resumed_from = None if latest is None else latest.step
    if latest is not None:
        check_resumable(latest.uri, cfg, spec)
        if latest.step >= cfg.optim.steps:
            print_fn(
                f"run {name} is complete: its latest checkpoint ({latest.uri}) is at step "
                f"{resumed_from} of optim.steps={cfg.optim.steps}; raise optim.steps to "
                "train on."
            )
            from lejepa_ray.data.sources import class_names

            return _probe(
                cfg,
                spec,
                run_dir,
                latest.uri,
                latest.metrics,
                0.0,
                resumed_from,
                class_names(cfg.data) is not None,
                print_fn,
            )
    storage.write_text(f"{run_dir}/{checkpoint.CONFIG_FILE}", to_yaml(cfg))
    storage.remove(f"{run_dir}/{STOPPED_FILE}")
    connect(
        train_cpus=cfg.scaling.num_workers * cfg.scaling.cpus_per_worker,
        verbose=cfg.logging.verbose,
    )
    # Per-operator progress bars from every epoch would bury the training's own progress line,
    # which already reports throughput and the time spent waiting for data.
    DataContext.get_current().enable_progress_bars = False
    stream = build_view_stream(cfg.data)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "cfg": cfg,
            "spec": spec,
            "counter": stream.counter,
            "run_dir": run_dir,
            "flops_per_image": train_flops_per_image(spec, cfg.model, cfg.data.views),
        },
        scaling_config=RayScaling(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={
                "CPU": cfg.scaling.cpus_per_worker,
                **({"GPU": 1} if cfg.scaling.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=name,
            storage_path=root,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(max_failures=cfg.fault.max_failures),
            # Ray Train's per-report INFO lines would interleave with our progress line.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
        # A factory, called at the start of every attempt (the first, and each restart after
        # a worker failure): the pipeline starts at the latest checkpoint's data epoch.
        datasets={"train": functools.partial(_train_dataset, stream.dataset, run_dir)},
    )
    where = "" if latest is None else f"; resuming from step {latest.step} ({latest.uri})"
    print_fn(
        f"run {name}: {cfg.model.name} on {cfg.scaling.num_workers} "
        f"{'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s), {cfg.scaling.strategy}, "
        f"{cfg.optim.steps} steps; outputs in {run_dir}{where}"
    )
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except WorkerGroupError as e:
        raise _user_error(e) from None
    seconds = time.perf_counter() - start
    stopped = storage.read_text(f"{run_dir}/{STOPPED_FILE}")
    ckpt = result.checkpoint
    final = storage.uri_of(ckpt.filesystem, ckpt.path) if ckpt else None
    if stopped is not None:
        last = final or "none (no checkpoint yet)"
        raise TrainingStopped(f"{json.loads(stopped)['message']} Last good checkpoint: {last}")
    metrics = dict(result.metrics or {})
    # A resumed run reports what its workers' last attempt loaded: the driver's pick, unless a
    # worker refused that checkpoint and the restart fell back past it. A run started afresh
    # stays so, whatever a later worker restart resumed from.
    worker_resumed = metrics.get(RESUMED_FROM)
    if resumed_from is not None and worker_resumed is not None:
        resumed_from = int(worker_resumed)
    return _probe(
        cfg,
        spec,
        run_dir,
        final,
        metrics,
        seconds,
        resumed_from,
        stream.classes is not None,
        print_fn,
    )


def _probe(
    cfg: PretrainConfig,
    spec: BackboneSpec,
    run_dir: str,
    ckpt: str | None,
    metrics: dict,
    seconds: float,
    resumed_from: int | None,
    labelled: bool,
    print_fn,
) -> PretrainResult:
    """The run's result, with the probes of its final checkpoint when the data has labels."""
    report = None
    if cfg.probe.knn and not labelled:
        print_fn(f"probes skipped: data.source={cfg.data.source} has no labels.")
    elif cfg.probe.knn and ckpt is not None:
        report = probe_checkpoint(cfg, spec, ckpt)
    return PretrainResult(run_dir, ckpt, metrics, report, seconds, resumed_from)


def _user_error(error: Exception) -> Exception:
    """The workers' own error when it is one whose message tells the user what to do (a bad
    checkpoint or bad data), rather than Ray's wrapper around it."""
    from lejepa_ray.data.stream import DataQualityError

    for failure in getattr(error, "worker_failures", {}).values():
        if isinstance(failure, checkpoint.CheckpointError | DataQualityError | ConfigError):
            return failure
    return error


def check_resumable(path: str, cfg: PretrainConfig, spec: BackboneSpec) -> None:
    """Raise CheckpointError when the run's latest checkpoint (at ``path``) does not fit the
    model ``cfg`` builds, before Ray starts (the workers would fail on it, once per retry).
    Compares the checkpoint's index with the model built on the meta device; reads the index
    and the state file only, wherever the checkpoint lies."""
    with torch.device("meta"):
        encoder = LeJEPAEncoder(spec, cfg.model)
    checkpoint.check_model(path, encoder, cfg.model.name)


@dataclass
class Resumed:
    """The checkpoint a worker group resumed from (the same on every rank)."""

    uri: str
    state: checkpoint.TrainState
    seconds: float
    """Wall time of the load on this rank."""
    bytes_read: list[int]
    """Bytes each rank fetched for it, by rank."""
    bytes_total: int
    """The checkpoint's size in bytes."""


def _resume(trainer, run_dir: str) -> tuple[Resumed | None, set[str]]:
    """Load the run's latest complete checkpoint into ``trainer`` (every rank): what it was,
    or None for a fresh start; and the names of every checkpoint Ray Train registered for the
    run, which a step saved again must not reuse.

    A checkpoint that fails verification while it loads (a changed byte) is marked refused and
    the attempt fails, so that Ray Train restarts the workers, and the data pipeline, from the
    previous complete checkpoint (counted in ``fault.max_failures``)."""
    import ray.train

    if ray.train.get_checkpoint() is None:
        return None, set()
    entries = checkpoint.registered(run_dir)
    taken = {folder.name() for folder, _ in entries}
    latest = checkpoint.first_complete(entries)
    if latest is None:
        return None, taken
    start, stats = time.perf_counter(), {}
    try:
        state = checkpoint.load(latest.opened, trainer, stats)
    except checkpoint.CheckpointError as e:
        if ray.train.get_context().get_world_rank() == 0:
            checkpoint.refuse(latest.uri, str(e))
        raise checkpoint.CheckpointError(
            f"{e} It is marked refused; the restarted workers resume from the checkpoint "
            "before it (rerun the same command if the run has no restarts left)."
        ) from None
    seconds = time.perf_counter() - start
    bytes_read = [stats["bytes_read"]]
    if torch.distributed.is_initialized():  # what each rank fetched, for rank 0 to log
        bytes_read = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(bytes_read, stats["bytes_read"])
    return Resumed(latest.uri, state, seconds, bytes_read, stats["bytes_total"]), taken


def _train_dataset(dataset, run_dir: str):
    """The run's training Dataset for one attempt, set to start at the data epoch of the
    latest checkpoint (runs in Ray Train's controller)."""
    from lejepa_ray.data.stream import start_at

    latest = checkpoint.latest_checkpoint(run_dir)
    return start_at(dataset, int(latest.metrics.get("data/epoch", 0)) if latest else 0)


def probe_checkpoint(cfg: PretrainConfig, spec: BackboneSpec, ckpt: str) -> ProbeReport:
    """The probes of the checkpoint's backbone, of the same backbone at initialization (the
    workers' seed) and of raw pixels. A run on ``data.split=train`` is scored on
    ``data.split=val`` of its source; any other on the hash split of its data."""
    from lejepa_ray.evaluate.probe import load_labelled, probe_report
    from lejepa_ray.train.rankme import heldout_data

    held, is_held_out = heldout_data(cfg.data)  # the same held-out split RankMe measures on
    val = held if is_held_out else None
    data = load_labelled(cfg.data, cfg.data.views.global_size, cfg.probe.max_samples, val)
    torch.manual_seed(cfg.seed)
    at_init = LeJEPAEncoder(spec, cfg.model)
    trained = copy.deepcopy(at_init)
    checkpoint.load_model_weights(ckpt, trained)  # the model's tensors only, where they lie
    return probe_report(trained, data, cfg.probe, at_init)


def train_worker(config: dict) -> None:
    """Ray Train worker loop: one data-parallel rank of the run, resumed from the latest
    checkpoint when there is one."""
    import ray.train
    import ray.train.torch

    from lejepa_ray.data.stream import EpochCursor, skip_metrics
    from lejepa_ray.model.flops import peak_tflops
    from lejepa_ray.train.rankme import heldout_batch, rankme_metrics
    from lejepa_ray.train.trainer import NonFiniteLossError, Trainer, fit

    # Ray Train logs each report, with all its metrics, from every rank at INFO, on a logger
    # named after its source file that LoggingConfig does not reach; our progress line says it.
    logging.getLogger(ray_train_report_logger()).setLevel(logging.WARNING)
    cfg: PretrainConfig = config["cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    trainer = Trainer(cfg, config["spec"], device)
    resumed, taken = _resume(trainer, config["run_dir"])
    state = resumed.state if resumed else checkpoint.TrainState(step=0)
    cursor = EpochCursor(
        config["counter"],
        cfg.data,
        cfg.scaling.batch_size,
        world,
        state.data_epoch,
        state.data_samples,
        prefetch=cfg.data.prefetch_batches,
    )
    writer = None
    if rank == 0:
        writer = MetricsWriter(
            config["run_dir"],
            cfg.optim.steps,
            resumed_step=state.step if resumed is not None else None,
        )
        if resumed is not None:
            writer.resumed(state.step, resumed.seconds, resumed.bytes_read, resumed.bytes_total)
            log.warning(
                "resumed from %s: step %d, data epoch %d (+%d samples), written by %d "
                "rank(s), loaded in %.1f s; rank(s) read %s of %.1f MB",
                resumed.uri,
                state.step,
                state.data_epoch,
                state.data_samples,
                state.world_size,
                resumed.seconds,
                "/".join(f"{b / 1e6:.1f}" for b in resumed.bytes_read),
                resumed.bytes_total / 1e6,
            )
    config_yaml = to_yaml(cfg)
    rankme_images = None
    if cfg.logging.rankme_samples:
        rankme_images = heldout_batch(
            cfg.data, config["spec"].global_size, cfg.logging.rankme_samples
        )

    def report(step: int, metrics: dict[str, float], save: bool) -> None:
        metrics = {**metrics, "data/epoch": cursor.epoch}
        if cursor.boundary_waits:  # epochs entered since the last report
            metrics["time/epoch_start_wait_s"] = max(w for _, w in cursor.boundary_waits)
            cursor.boundary_waits.clear()
        if save and rankme_images is not None:  # every rank: FSDP2 gathers for it
            metrics.update(rankme_metrics(trainer.encoder, rankme_images, bf16=trainer.autocast))
        if writer is not None:
            metrics.update(skip_metrics(config["counter"]))
            writer.log(step, metrics)
        metrics["step"] = step
        if resumed is not None:
            metrics[RESUMED_FROM] = state.step
        if not save:
            ray.train.report(metrics)
            return
        if writer is not None:
            writer.sync()
        metrics["data/samples"] = cursor.samples
        saved = checkpoint.TrainState(
            step=step,
            world_size=world,
            skipped_steps=trainer.skipped_steps,
            data_epoch=cursor.epoch,
            data_samples=cursor.samples,
            scheduler=trainer.scheduler.state_dict(),
            model=cfg.model.name,
        )
        name = f"checkpoint_{step:08d}"
        # A run that fell back past a refused checkpoint saves that step again: under a name of
        # its own, or Ray, retiring the refused entry, would delete the new directory with it.
        for n in itertools.count(1):
            if name not in taken:
                break
            name = f"checkpoint_{step:08d}_{n}"
        with tempfile.TemporaryDirectory(prefix="lejepa-ckpt-") as tmp:
            checkpoint.save(tmp, trainer, saved, config_yaml)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
            )

    try:
        fit(
            trainer,
            iter(cursor),
            report=report,
            flops_per_image=config["flops_per_image"],
            peak_tflops=peak_tflops(device, cfg.logging.peak_tflops),
            world_size=world,
        )
    except NonFiniteLossError as e:
        # Every rank raises at the same step (the finiteness flag is all-reduced). Ending the
        # attempt normally, rather than failing it, keeps Ray from restarting into the same
        # divergence; the driver reads the marker and reports it.
        if rank == 0:
            storage.write_text(
                f"{config['run_dir']}/{STOPPED_FILE}",
                json.dumps({"step": trainer.step, "message": str(e)}),
            )
            log.error("%s", e)
    finally:
        if writer is not None:
            writer.close()
