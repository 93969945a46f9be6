"""The Ray Train side of a run: the ``TorchTrainer`` and its fit.

:func:`build` makes the ``TorchTrainer`` that runs :func:`~lejepa_ray.launch.worker.train_worker`
on every rank with a :class:`~lejepa_ray.launch.worker.WorkerConfig`: its scaling (a fixed or
an elastic group), failure and preemption settings, the failure and preemption recorders
(:mod:`lejepa_ray.launch.events`), the probes during training (:mod:`lejepa_ray.launch.probes`)
and the training dataset as a factory, called at the start of every attempt, that starts the
views stream at the latest checkpoint's data position. :func:`fit` runs it, giving back a
worker's own user-facing error (a bad checkpoint, bad data) in place of Ray's wrapper, and
preemption restarts run out as ``TrainingStopped``; :func:`final_checkpoint` finds the run's
last checkpoint, or the workers' stop on non-finite losses.

The driver (:func:`lejepa_ray.launch.driver.run`) calls them in that order, between starting
Ray and the probes after training.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import ray.data

if TYPE_CHECKING:
    # Ray Train v2's classes, which `ray.train` gives at run time (v2 is Ray 2.60's default);
    # a type checker reads the v1 ones there, which lack the preemption and elastic fields.
    from ray.train.v2.api.config import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
    )
    from ray.train.v2.api.config import ScalingConfig as RayScaling
    from ray.train.v2.api.exceptions import WorkerGroupError
    from ray.train.v2.api.result import Result
    from ray.train.v2.torch.torch_trainer import TorchTrainer
else:
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        Result,
        RunConfig,
        WorkerGroupError,
    )
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchTrainer

from lejepa_ray import compat, runs, storage
from lejepa_ray.config import PretrainConfig
from lejepa_ray.data.stream import ViewStream
from lejepa_ray.errors import CheckpointError, ConfigError, DataQualityError, TrainingStopped
from lejepa_ray.launch import probes
from lejepa_ray.launch.events import FailureRecorder, PreemptionRecorder
from lejepa_ray.launch.preflight import Plan
from lejepa_ray.launch.worker import WORKER_CONFIG, WorkerConfig, train_worker
from lejepa_ray.model.flops import train_flops_per_image
from lejepa_ray.train import checkpoint


def build(plan: Plan, stream: ViewStream, callbacks: Sequence, bar: bool = False) -> TorchTrainer:
    """The run's ``TorchTrainer``. ``bar``: the driver draws a live bar, so the workers log no
    progress lines."""
    cfg = plan.cfg
    job = WorkerConfig(
        cfg=cfg,
        spec=plan.spec,
        counter=stream.counter,
        rows_per_epoch=stream.plan.rows_per_epoch,
        epochs_per_pass=stream.epochs_per_pass,
        run_dir=plan.run_dir,
        flops_per_image=train_flops_per_image(plan.spec, cfg.model, cfg.data.views),
        progress_lines=not bar,
    )
    return TorchTrainer(
        train_worker,
        train_loop_config={WORKER_CONFIG: job},
        scaling_config=_ray_scaling(cfg),
        run_config=RunConfig(
            name=plan.name,
            storage_path=plan.root,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(
                max_failures=cfg.fault.max_failures,
                max_preemption_failures=cfg.fault.max_preemptions,
                relax_collectives_on_preemption=cfg.fault.relax_collectives_on_preemption,
                preemption_grace_s=cfg.fault.preemption_grace_s,
            ),
            # Ray Train's per-report INFO lines would interleave with our progress line.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=[
                FailureRecorder(plan.run_dir),
                PreemptionRecorder(plan.run_dir),
                *callbacks,
            ],
        ),
        # A factory, called at the start of every attempt (the first, and each restart after
        # a worker failure): the pipeline starts at the latest checkpoint's data position.
        datasets={"train": functools.partial(_train_dataset, stream, plan.run_dir)},
        validation_config=probes.validation_config(cfg, plan.spec, plan.run_dir),
    )


def _ray_scaling(cfg: PretrainConfig) -> RayScaling:
    """Ray Train's scaling: a fixed group, or an elastic one from ``[min, max]``."""
    s = cfg.scaling
    return RayScaling(
        num_workers=(s.min_workers, s.max_workers) if s.elastic else s.max_workers,
        use_gpu=s.use_gpu,
        resources_per_worker={
            "CPU": s.cpus_per_worker,
            **({"GPU": 1} if s.use_gpu else {}),
            **s.resources,
        },
        elastic_resize_monitor_interval_s=s.resize_check_s,
    )


def _train_dataset(stream: ViewStream, run_dir: str) -> ray.data.Dataset:
    """The run's training Dataset for one attempt, starting at the data position of the latest
    checkpoint (runs in Ray Train's controller): what came before it is never read."""
    latest = runs.latest_checkpoint(run_dir)
    if latest is None:
        return stream.at(0, 0)
    state = checkpoint.read_state(latest.opened)  # the position the workers resume from
    return stream.at(state.data_epoch, state.data_samples)


def fit(trainer: TorchTrainer) -> tuple[Result, float]:
    """Ray Train's result and the wall time of ``fit``; a worker's own user-facing error
    (bad checkpoint, bad data) instead of Ray's wrapper around it."""
    start = time.perf_counter()
    # v2's trainer is annotated with v1's Result and RunConfig (Ray 2.60); the objects are v2's.
    try:
        result = cast(Result, trainer.fit())
    except WorkerGroupError as e:
        raise _user_error(e) from None
    except compat.preemption_error() as e:
        limit = cast(FailureConfig, trainer.run_config.failure_config).max_preemption_failures
        raise TrainingStopped(
            f"the run was preempted more often than fault.max_preemptions={limit} allows "
            f"({e}). Rerun the same command to resume from its latest checkpoint, or raise "
            "fault.max_preemptions (-1: unlimited)."
        ) from None
    return result, time.perf_counter() - start


def _user_error(error: Exception) -> Exception:
    """The workers' own error when it is one whose message tells the user what to do (a bad
    checkpoint or bad data), rather than Ray's wrapper around it."""
    for failure in getattr(error, "worker_failures", {}).values():
        if isinstance(failure, CheckpointError | DataQualityError | ConfigError):
            return failure
    return error


def final_checkpoint(plan: Plan, result: Result) -> str | None:
    """Where the final checkpoint is; raises TrainingStopped when the workers stopped the run
    on non-finite losses."""
    ckpt = result.checkpoint
    final = storage.uri_of(ckpt.filesystem, ckpt.path) if ckpt else None
    stopped = storage.read_text(f"{plan.run_dir}/{runs.STOPPED_FILE}")
    if stopped is not None:
        last = final or "none (no checkpoint yet)"
        raise TrainingStopped(f"{json.loads(stopped)['message']} Last good checkpoint: {last}")
    return final
