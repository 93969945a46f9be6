"""The pretraining driver: validate, connect to Ray, run the Ray Train workers, probe.

``run(cfg)`` is what ``lejepa-ray pretrain`` and ``jobs/pretrain.py`` call. The driver checks
the whole config (including that the backbone takes the view sizes and that the data exists)
before asking Ray for anything, builds the Ray Data stream, runs a ``TorchTrainer`` whose
workers execute :func:`lejepa_ray.launch.worker.train_worker`, then loads the final checkpoint
in the driver for the probes.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ray
import ray.data
import torch
import yaml
from ray.data import DataContext
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
from lejepa_ray.config import PretrainConfig, check_run, to_yaml
from lejepa_ray.data.batch_split import drawn_per_worker
from lejepa_ray.data.plan import Plan as DataPlan
from lejepa_ray.data.readers import SourcePlan, source_plan
from lejepa_ray.data.sources import check_path, class_names
from lejepa_ray.data.stream import ViewStream, build_view_stream, data_node_resources
from lejepa_ray.errors import (
    CheckpointError,
    ConfigError,
    DataQualityError,
    SourceError,
    TrainingStopped,
)
from lejepa_ray.evaluation.probe import ProbeReport, load_labelled, probe_report
from lejepa_ray.launch import events, probes, progress, runtime
from lejepa_ray.launch.events import FailureRecorder, PreemptionRecorder
from lejepa_ray.launch.reporter import RESUMED_FROM
from lejepa_ray.launch.worker import WORKER_CONFIG, WorkerConfig, train_worker
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder, resolve_backbone
from lejepa_ray.model.flops import train_flops_per_image
from lejepa_ray.train import checkpoint, trackers, tracking
from lejepa_ray.train.rankme import heldout_data


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
    probes_during: dict[int, dict] = field(default_factory=dict)
    """The probes during training (``probe.every_steps``), by step: ``probe/knn_top1``,
    ``probe/linear_top1``, or ``probe/failed`` with its ``error``."""


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


def run(
    cfg: PretrainConfig, *, print_fn: Callable[[str], None] = print, callbacks: Sequence = ()
) -> PretrainResult:
    """Pretrain with ``cfg`` on the connected (or a new local) Ray cluster; then probe.

    ``callbacks``: Ray Train ``UserCallback`` objects for the run (a sweep forwards every
    report to Tune with one).

    A run whose directory (``storage_path/name``) already has a checkpoint resumes from the
    latest one: step, LR schedule, data position, optimizer and RNG states, on any number of
    workers. Workers that fail are restarted from the latest checkpoint up to
    ``fault.max_failures`` times.

    Raises:
        ConfigError, SourceError: before any Ray resource is requested, for a config that
            cannot run or data that is not there.
        CheckpointError: before Ray starts, when the run's latest checkpoint holds another
            model than the config builds.
        TrainingStopped: too many consecutive non-finite steps; the last good checkpoint
            stays, and rerunning resumes from it.
    """
    plan = validate(cfg, print_fn)
    latest = runs.latest_checkpoint(plan.run_dir)
    if latest is not None:
        check_resumable(latest.uri, cfg, plan.spec)
        if latest.step >= cfg.optim.steps:
            print_fn(
                f"run {plan.name} is complete: its latest checkpoint ({latest.uri}) is at step "
                f"{latest.step} of optim.steps={cfg.optim.steps}; raise optim.steps to "
                "train on."
            )
            labelled = class_names(cfg.data) is not None
            return _finish(plan, latest.uri, latest.metrics, 0.0, latest.step, labelled, print_fn)
    listed = source_plan(cfg.data)  # lists the source once, before Ray starts
    check_epoch_holds_a_batch(listed.plan, cfg)
    _mark_started(plan)
    stream = _start_ray(cfg, listed)
    resource = cfg.data.node_resource
    if resource and not ray.cluster_resources().get(resource):
        print_fn(
            f"note: no node of this cluster declares {resource} (data.node_resource) yet, and "
            "the views tasks run only on such nodes: they wait until the autoscaler starts one "
            "(cluster.yaml's cpu_data nodes declare data_node). On a cluster without an "
            f"autoscaler, start a node with `ray start --resources='{{\"{resource}\": 1}}'`, or "
            "unset data.node_resource."
        )
    bar = progress.wanted(cfg.logging, plan.run_dir)
    trainer = _torch_trainer(plan, stream, callbacks, bar)
    where = "" if latest is None else f"; resuming from step {latest.step} ({latest.uri})"
    print_fn(
        f"run {plan.name}: {cfg.model.name} on {_workers(cfg)} "
        f"{'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s), {cfg.scaling.strategy}, "
        f"{cfg.optim.steps} steps; outputs in {plan.run_dir}{where}"
    )
    if bar:  # on a terminal: a live bar in place of the workers' progress lines
        with progress.LiveBar(plan.run_dir, cfg.optim.steps, latest.step if latest else 0):
            result, seconds = _fit(trainer)
    else:
        result, seconds = _fit(trainer)
    happened = events.summary(plan.run_dir)
    if happened:
        print_fn(happened)
    final = _final_checkpoint(plan, result)
    metrics = dict(result.metrics or {})
    resumed_from = None if latest is None else latest.step
    # A resumed run reports what its workers' last attempt loaded: the driver's pick, unless a
    # worker refused that checkpoint and the restart fell back past it. A run started afresh
    # stays so, whatever a later worker restart resumed from.
    if resumed_from is not None and metrics.get(RESUMED_FROM) is not None:
        resumed_from = int(metrics[RESUMED_FROM])
    labelled = stream.classes is not None
    result = _finish(plan, final, metrics, seconds, resumed_from, labelled, print_fn)
    _track_probes(plan, result)
    tracked = tracking.describe(cfg.logging, plan.run_dir)
    if tracked:
        print_fn(tracked)
    return result


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


def _mark_started(plan: Plan) -> None:
    """The run directory's ``config.yaml``, and no stale stop marker."""
    storage.write_text(f"{plan.run_dir}/{checkpoint.CONFIG_FILE}", to_yaml(plan.cfg))
    storage.remove(f"{plan.run_dir}/{runs.STOPPED_FILE}")


def _start_ray(cfg: PretrainConfig, listed: SourcePlan) -> ViewStream:
    """Connect to Ray (or start it) and build the views stream on it."""
    runtime.connect(
        train_cpus=cfg.scaling.max_workers * cfg.scaling.cpus_per_worker,
        local_resources=data_node_resources(cfg.data),
        verbose=cfg.logging.verbose,
    )
    # Per-operator progress bars from every epoch would bury the training's own progress line,
    # which already reports throughput and the time spent waiting for data.
    DataContext.get_current().enable_progress_bars = False
    return build_view_stream(cfg.data, listed=listed, run_rows=run_rows(cfg))


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


def _torch_trainer(
    plan: Plan, stream: ViewStream, callbacks: Sequence, bar: bool = False
) -> TorchTrainer:
    """``bar``: the driver draws a live bar, so the workers log no progress lines."""
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


def _workers(cfg: PretrainConfig) -> str:
    """``2`` or ``1-2`` (elastic) for the run's first line."""
    s = cfg.scaling
    return f"{s.min_workers}-{s.max_workers}" if s.elastic else str(s.max_workers)


def _train_dataset(stream: ViewStream, run_dir: str) -> ray.data.Dataset:
    """The run's training Dataset for one attempt, starting at the data position of the latest
    checkpoint (runs in Ray Train's controller): what came before it is never read."""
    latest = runs.latest_checkpoint(run_dir)
    if latest is None:
        return stream.at(0, 0)
    state = checkpoint.read_state(latest.opened)  # the position the workers resume from
    return stream.at(state.data_epoch, state.data_samples)


def _fit(trainer: TorchTrainer) -> tuple[Result, float]:
    """Ray Train's result and the wall time of ``fit``; a worker's own user-facing error
    (bad checkpoint, bad data) instead of Ray's wrapper around it."""
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except WorkerGroupError as e:
        raise _user_error(e) from None
    except compat.preemption_error() as e:
        limit = trainer.run_config.failure_config.max_preemption_failures
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


def _final_checkpoint(plan: Plan, result: Result) -> str | None:
    """Where the final checkpoint is; raises TrainingStopped when the workers stopped the run
    on non-finite losses."""
    ckpt = result.checkpoint
    final = storage.uri_of(ckpt.filesystem, ckpt.path) if ckpt else None
    stopped = storage.read_text(f"{plan.run_dir}/{runs.STOPPED_FILE}")
    if stopped is not None:
        last = final or "none (no checkpoint yet)"
        raise TrainingStopped(f"{json.loads(stopped)['message']} Last good checkpoint: {last}")
    return final


def _finish(
    plan: Plan,
    ckpt: str | None,
    metrics: dict,
    seconds: float,
    resumed_from: int | None,
    labelled: bool,
    print_fn: Callable[[str], None],
) -> PretrainResult:
    """The run's result, with the probes of its final checkpoint when the data has labels."""
    report = None
    if plan.cfg.probe.knn and not labelled:
        print_fn(f"probes skipped: data.source={plan.cfg.data.source} has no labels.")
    elif plan.cfg.probe.knn and ckpt is not None:
        report = probe_final(plan.cfg, plan.spec, ckpt)
    during = probes.read_probes(plan.run_dir) if plan.cfg.probe.every_steps else {}
    return PretrainResult(plan.run_dir, ckpt, metrics, report, seconds, resumed_from, during)


def _track_probes(plan: Plan, result: PretrainResult) -> None:
    """The probes during training and after it, into the run's tracking (``metrics.jsonl``,
    MLflow, W&B) at their steps."""
    probed: dict[int, dict[str, float]] = {}
    # A resumed run's tracking has the probes up to the checkpoint it resumed from already.
    after = -1 if result.resumed_from is None else result.resumed_from
    for step, record in result.probes_during.items():
        if step <= after:
            continue
        probed[step] = {k: float(v) for k, v in record.items() if k.startswith("probe/")}
    if result.probe is not None and int(result.metrics.get("step", -1)) > after:
        final = probed.setdefault(int(result.metrics["step"]), {})
        for name, scores in (
            ("", result.probe.trained),
            ("init/", result.probe.init),
            ("raw/", result.probe.raw),
        ):
            if scores is None:
                continue
            for probe, value in (
                ("knn_top1", scores.knn_top1),
                ("linear_top1", scores.linear_top1),
            ):
                if value is not None:
                    final[f"probe/final/{name}{probe}"] = value
    config_yaml = to_yaml(plan.cfg)
    run = trackers.RunInfo(plan.run_dir, plan.name, yaml.safe_load(config_yaml), config_yaml)
    tracking.log_probes(plan.cfg.logging, run, probed)


def probe_final(cfg: PretrainConfig, spec: BackboneSpec, ckpt: str) -> ProbeReport:
    """The probes of the checkpoint's backbone, of the same backbone at initialization (the
    workers' seed) and of raw pixels. A run on ``data.split=train`` is scored on
    ``data.split=val`` of its source; any other on the hash split of its data."""
    held, is_held_out = heldout_data(cfg.data)  # the same held-out split RankMe measures on
    val = held if is_held_out else None
    data = load_labelled(cfg.data, cfg.data.views.global_size, cfg.probe.max_samples, val)
    torch.manual_seed(cfg.seed)
    at_init = LeJEPAEncoder(spec, cfg.model)
    trained = copy.deepcopy(at_init)
    checkpoint.load_model_weights(ckpt, trained)  # the model's tensors only, where they lie
    return probe_report(trained, data, cfg.probe, at_init)
