"""Ray Tune sweeps over the pretrain config, ranked without labels (RankMe or the score).

A sweep is a Tune experiment in ``storage_path/<name>``. Each trial is one pretraining run
(the Ray Train v2 pattern): a Tune function trial, :func:`_trial`, builds its config (the
sweep's config and overrides, then the values it drew from the search space) and calls
:func:`lejepa_ray.launch.driver.run`, whose TorchTrainer forwards every report of rank 0 to Tune
through ``TuneReportCallback``. Trial ``T``'s run, with its checkpoints and TensorBoard events,
is ``<sweep>/runs/T``.

This module wires the steps together; each step is its own module: the options and their
checks (:mod:`~lejepa_ray.tune.options`), the Tune experiment that runs the trials, its
scheduler, search and console (:mod:`~lejepa_ray.tune.tuner`), the label-free metrics and the
order of the trials (:mod:`~lejepa_ray.tune.ranking`), the table, CSV and plot
(:mod:`~lejepa_ray.tune.report`), and the check of the ranking against labels
(:mod:`~lejepa_ray.tune.validation`).

Beside Tune's state the sweep writes ``sweep.json`` (what was swept, so that rerunning the
command resumes it), ``results.csv``, ``plot.png``, ``winner/`` (the best trial's backbone as a
timm model) and, with labels, ``validation.json`` and one ``validation_<metric>.png`` scatter
plot per label-free metric.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.integration.ray_train import TuneReportCallback

from lejepa_ray import runs, storage
from lejepa_ray.compat import quiet_logger
from lejepa_ray.config import PretrainConfig, ProbeConfig, to_yaml, with_overrides
from lejepa_ray.data.stream import data_node_resources
from lejepa_ray.errors import ConfigError, option
from lejepa_ray.evaluation.export import export
from lejepa_ray.launch import driver, runtime
from lejepa_ray.tune.options import SweepOptions, check, sweep_name
from lejepa_ray.tune.ranking import TrialRow, rank
from lejepa_ray.tune.report import cell, format_convergence, format_table, plot_png, results_csv
from lejepa_ray.tune.space import Dimension, overrides

# _FinishingASHA: sweeps started while it was defined here pickled it under this module's name
# into their tuner.pkl, and resuming one unpickles it from here.
from lejepa_ray.tune.tuner import _FinishingASHA as _FinishingASHA
from lejepa_ray.tune.tuner import new_tuner, trial_count, tune_output
from lejepa_ray.tune.validation import (
    format_validation,
    probe_stopped,
    probe_trial,
    validate,
    validation_plots,
)

SPEC_FILE, RESULTS_FILE, PLOT_FILE = "sweep.json", "results.csv", "plot.png"
WINNER_DIR, VALIDATION_FILE, RUNS_DIR = "winner", "validation.json", "runs"


@dataclass(kw_only=True)
class SweepResult:
    """What a sweep produced."""

    sweep_dir: str
    rows: list[TrialRow]
    """Ranked: completed trials by the ``--select_by`` metric, then early-stopped ones, then
    failed ones."""
    seconds: float
    """Wall time of ``Tuner.fit`` in this call (a resumed sweep: the resumed part)."""
    resumed: bool
    winner_dir: str | None
    validation: dict[str, Any] | None
    """Spearman ρ and the trials it was computed on (``--validate_with_labels``)."""
    interrupted: bool = False
    """Stopped by Ctrl+C (SIGINT) before every trial ended; ``rows`` is empty."""


@dataclass(frozen=True, kw_only=True)
class _TrialSetup:
    """What every trial needs besides its sampled values (shipped with the trainable)."""

    base: PretrainConfig
    runs_dir: str
    validate_data: str | None
    val_data: str | None = None
    group: str | None = None
    """The sweep's name: the tracking group of its trials, unless the config sets one."""


def _trial(params: dict[str, Any], setup: _TrialSetup) -> None:
    """One Tune trial: a whole pretraining run, reported to Tune step by step; then, when asked
    for, the probes of its final backbone in one last report."""
    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(setup.base, [*overrides(params), "probe.knn=false"])
    # Set, not parsed as an override: an all-digit id such as 28172_00000 would be read as
    # the integer 2817200000.
    cfg = replace(cfg, name=trial_id, storage_path=setup.runs_dir)
    if cfg.logging.group is None:  # MLflow and W&B file the trials together
        cfg = replace(cfg, logging=replace(cfg.logging, group=setup.group))
    if setup.validate_data:
        # The driver's own probes after training are off: the sweep probes on its
        # --validate_with_labels, with evaluate's protocol (ProbeConfig's defaults). Probes during
        # training (probe.every_steps) use the same data and protocol, so that a trial ASHA
        # stops can be scored from its last checkpoint's record (validation.probe_stopped).
        protocol = replace(
            ProbeConfig(), data=setup.validate_data, val_data=setup.val_data, knn=False
        )
        keep = {f: getattr(cfg.probe, f) for f in ("every_steps", "resources", "timeout_s")}
        cfg = replace(cfg, probe=replace(protocol, **keep))
    result = driver.run(cfg, callbacks=[TuneReportCallback()])
    if setup.validate_data and result.checkpoint:
        probes = probe_trial(result.checkpoint, setup.validate_data, setup.val_data)
        tune.report({**result.metrics, **probes})


def run_sweep(opts: SweepOptions, *, print_fn: Callable[[str], None] = print) -> SweepResult:
    """Run (or resume) the sweep ``opts`` describes on the connected or a new local Ray
    instance; rank the trials, write the results, export the winner.

    Raises:
        ConfigError: before Ray starts, for an invalid space, config or options, or when a
            sweep of that name exists with other settings.
    """
    base, space = check(opts)
    runtime.check_local_gpus(base.scaling)
    name = sweep_name(opts)
    root = runs.storage_root(base)
    storage.check_output(root, "storage_path folder")
    sweep_dir = f"{root.rstrip('/')}/{name}"
    spec = _spec(opts, base, space)
    started = _started(sweep_dir, name, spec)
    _connect(opts, base)
    setup = _TrialSetup(
        base=base,
        runs_dir=f"{sweep_dir}/{RUNS_DIR}",
        validate_data=opts.validate_with_labels,
        val_data=opts.val_data,
        group=name,
    )
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), {"CPU": 1})
    resumed = started and tune.Tuner.can_restore(sweep_dir)
    if resumed:
        print_fn(
            f"resuming sweep {name} from {sweep_dir}: finished trials are kept, "
            "unfinished ones resume from their latest checkpoints"
        )
        tuner = tune.Tuner.restore(
            sweep_dir, trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        storage.write_text(f"{sweep_dir}/{SPEC_FILE}", json.dumps(spec, indent=2))
        tuner = new_tuner(opts, base, space, trainable, name, root)
        print_fn(
            f"sweep {name}: {opts.samples} sample(s) of {opts.space}, {opts.scheduler}, "
            f"{opts.search} search, {opts.concurrent} at a time; outputs in "
            f"{sweep_dir} (TensorBoard: tensorboard --logdir {sweep_dir}/{RUNS_DIR})"
        )
    start = time.perf_counter()
    with tune_output(opts.verbose):
        grid = tuner.fit()
    seconds = time.perf_counter() - start
    unfinished = _unfinished(sweep_dir, trial_count(opts, space))
    if unfinished:  # Ctrl+C: Tune saved its state and returned
        print_fn(
            f"\nsweep {name} interrupted with {unfinished} unfinished trial(s); rerun the "
            "same command to resume it."
        )
        return SweepResult(
            sweep_dir=sweep_dir,
            rows=[],
            seconds=seconds,
            resumed=resumed,
            winner_dir=None,
            validation=None,
            interrupted=True,
        )
    rows = rank(grid, base, space, f"{sweep_dir}/{RUNS_DIR}", opts.select_by, opts.plateau_tol)
    if opts.validate_with_labels:
        probe_stopped(rows, opts.validate_with_labels, opts.val_data, print_fn)
    varied = [d for d in space if d.sampler != "fixed"]
    storage.write_text(f"{sweep_dir}/{RESULTS_FILE}", results_csv(rows, varied))
    storage.write_bytes(f"{sweep_dir}/{PLOT_FILE}", plot_png(rows, varied, name))
    print_fn(format_table(rows, varied, opts.select_by))
    print_fn(format_convergence(rows, base.loss.score_smoothing_steps, opts.plateau_tol))
    winner = _export_winner(rows, sweep_dir, print_fn) if opts.export_winner else None
    validation = None
    if opts.validate_with_labels:
        validation = _write_validation(rows, opts.select_by, sweep_dir, name, print_fn)
    return SweepResult(
        sweep_dir=sweep_dir,
        rows=rows,
        seconds=seconds,
        resumed=resumed,
        winner_dir=winner,
        validation=validation,
    )


def _spec(opts: SweepOptions, base: PretrainConfig, space: list[Dimension]) -> dict[str, Any]:
    """What ``sweep.json`` records: the settings a rerun must repeat to resume the sweep."""
    spec: dict[str, Any] = {
        "space": {d.key: [d.sampler, list(d.values)] for d in space},
        "config": to_yaml(base),
        "samples": opts.samples,
        "scheduler": opts.scheduler,
        # What ASHA stops by and the search draws by; a restored Tuner keeps the first one's.
        "select_by": opts.select_by,
        "search": opts.search,
        "seed": opts.search_seed,
    }
    # Validation options do not change what the trials train, but --val_data changes the
    # probes the trials report, so a resumed sweep must keep it.
    if opts.val_data:
        spec["val_data"] = opts.val_data
    return spec


def _started(sweep_dir: str, name: str, spec: dict[str, Any]) -> bool:
    """Whether the sweep ``name`` was started in ``sweep_dir`` (its ``sweep.json`` exists).

    Raises:
        ConfigError: it was started with another ``spec``; the message names what differs.
    """
    saved = storage.read_text(f"{sweep_dir}/{SPEC_FILE}")
    if saved is not None and json.loads(saved) != spec:
        changed = sorted(k for k, v in json.loads(saved).items() if spec.get(k) != v)
        raise ConfigError(
            f"sweep {name!r} in {sweep_dir} was started with another "
            f"{', '.join(changed)}; rerun it with the same {option('space')}, "
            f"{option('config')}, overrides and options to resume it, or give another "
            f"{option('name')}."
        )
    return saved is not None


def _connect(opts: SweepOptions, base: PretrainConfig) -> None:
    """Connect to Ray (or start a local instance) with CPUs for the concurrent trials: each
    trial's workers, and one CPU for its trial function."""
    trial_cpus = base.scaling.max_workers * base.scaling.cpus_per_worker + 1
    # The dashboard serves the state API, which Ray Train's placement-group cleaner polls to see
    # that the controller of a trial ASHA stopped is gone; without it the stopped trial's
    # workers' CPUs stay reserved and the next trial's data pipeline waits for them forever.
    runtime.connect(
        train_cpus=opts.concurrent * trial_cpus,
        local_resources=data_node_resources(base.data),
        dashboard=True,
        verbose=opts.verbose or base.logging.verbose,
        prefixes=True,
        # Quiet: the trials' own output (their runs' lines, Ray Train's) stays in the logs;
        # console.TrialLines says what a person follows.
        log_to_driver=opts.verbose or base.logging.verbose,
    )


def _write_validation(
    rows: list[TrialRow],
    select_by: str,
    sweep_dir: str,
    title: str,
    print_fn: Callable[[str], None],
) -> dict[str, Any]:
    """Validate the ranking against the probes; write ``validation.json`` and its plots."""
    validation = validate(rows, select_by)
    storage.write_text(f"{sweep_dir}/{VALIDATION_FILE}", json.dumps(validation, indent=2))
    for column, png in validation_plots(rows, title).items():
        storage.write_bytes(f"{sweep_dir}/validation_{column}.png", png)
    print_fn(format_validation(validation))
    return validation


def _unfinished(sweep_dir: str, expected: int) -> int:
    """Trials of the sweep that have not ended, by the state Tune saved (a trial running when
    Ctrl+C came is saved as pending, and resumes), counting those not yet created."""
    # It warns about trials without results yet, which are exactly what is being counted.
    with quiet_logger("ray.tune.analysis.experiment_analysis", logging.ERROR):
        trials = ExperimentAnalysis(sweep_dir).trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    return max(expected, len(trials)) - ended


def _export_winner(
    rows: list[TrialRow], sweep_dir: str, print_fn: Callable[[str], None]
) -> str | None:
    """Export the best completed trial's backbone to ``<sweep>/winner``; its path, or None."""
    best = next((r for r in rows if r.completed and r.checkpoint), None)
    if best is None:
        print_fn("no trial completed with a checkpoint; nothing to export.")
        return None
    out = f"{sweep_dir}/{WINNER_DIR}"
    assert best.checkpoint is not None  # picked for having one
    result = export(best.checkpoint, out)
    print_fn(
        f"\nwinner {best.trial} (score {best.selection_score:.4f}, RankMe "
        f"{cell(best.rankme_backbone, '.1f')}, step {result.step}): "
        f"{result.architecture} backbone exported to {out}\nload it: {result.load_line()}"
    )
    return out
