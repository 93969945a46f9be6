"""The pretraining driver: validate, connect to Ray, run the Ray Train workers, probe.

``run(cfg)`` is what ``lejepa-ray pretrain`` and ``jobs/pretrain.py`` call. The driver checks
the whole config (including that the backbone takes the view sizes and that the data exists)
before asking Ray for anything (:mod:`lejepa_ray.launch.preflight`), builds the Ray Data
stream, runs a ``TorchTrainer`` whose workers execute
:func:`lejepa_ray.launch.worker.train_worker` (:mod:`lejepa_ray.launch.torch_trainer`), then
loads the final checkpoint in the driver for the probes and adds them to the run's tracking.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ray
import torch
import yaml
from ray.data import DataContext

from lejepa_ray import runs, storage
from lejepa_ray.config import PretrainConfig, to_yaml
from lejepa_ray.data.readers import SourcePlan, source_plan
from lejepa_ray.data.sources import class_names
from lejepa_ray.data.stream import ViewStream, build_view_stream, data_node_resources
from lejepa_ray.evaluation.probe import ProbeReport, load_labelled, probe_report
from lejepa_ray.launch import events, preflight, probes, progress, runtime, torch_trainer
from lejepa_ray.launch.preflight import Plan
from lejepa_ray.launch.reporter import RESUMED_FROM
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder
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
    plan = preflight.validate(cfg, print_fn)
    latest = runs.latest_checkpoint(plan.run_dir)
    if latest is not None:
        preflight.check_resumable(latest.uri, cfg, plan.spec)
        if latest.step >= cfg.optim.steps:
            print_fn(
                f"run {plan.name} is complete: its latest checkpoint ({latest.uri}) is at step "
                f"{latest.step} of optim.steps={cfg.optim.steps}; raise optim.steps to "
                "train on."
            )
            labelled = class_names(cfg.data) is not None
            return _finish(plan, latest.uri, latest.metrics, 0.0, latest.step, labelled, print_fn)
    listed = source_plan(cfg.data)  # lists the source once, before Ray starts
    preflight.check_epoch_holds_a_batch(listed.plan, cfg)
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
    trainer = torch_trainer.build(plan, stream, callbacks, bar)
    where = "" if latest is None else f"; resuming from step {latest.step} ({latest.uri})"
    print_fn(
        f"run {plan.name}: {cfg.model.name} on {_workers(cfg)} "
        f"{'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s), {cfg.scaling.strategy}, "
        f"{cfg.optim.steps} steps; outputs in {plan.run_dir}{where}"
    )
    if bar:  # on a terminal: a live bar in place of the workers' progress lines
        with progress.LiveBar(plan.run_dir, cfg.optim.steps, latest.step if latest else 0):
            fitted, seconds = torch_trainer.fit(trainer)
    else:
        fitted, seconds = torch_trainer.fit(trainer)
    happened = events.summary(plan.run_dir)
    if happened:
        print_fn(happened)
    final = torch_trainer.final_checkpoint(plan, fitted)
    metrics = dict(fitted.metrics or {})
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
    return build_view_stream(cfg.data, listed=listed, run_rows=preflight.run_rows(cfg))


def _workers(cfg: PretrainConfig) -> str:
    """``2`` or ``1-2`` (elastic) for the run's first line."""
    s = cfg.scaling
    return f"{s.min_workers}-{s.max_workers}" if s.elastic else str(s.max_workers)


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
