"""Ray Tune sweeps over the pretrain config, ranked without labels by the selection score.

A sweep is a Tune experiment in ``storage_path/<name>``. Each trial is one pretraining run
(the Ray Train v2 pattern): a Tune function trial, :func:`_trial`, builds its config (the
sweep's config and overrides, then the values it drew from the search space) and calls
:func:`lejepa_ray.launch.driver.run`, whose TorchTrainer forwards every report of rank 0 to Tune
through ``TuneReportCallback``. Trial ``T``'s run, with its checkpoints and TensorBoard events,
is ``<sweep>/runs/T``.

Label-free metrics of each trial (:data:`LABEL_FREE`, each with its direction):

- ``selection_score/smoothed``: the training loss over λ^α, averaged over the last
  ``loss.score_smoothing_steps`` steps; lower is better (the LeJEPA paper finds it ranks runs as
  their linear-probe accuracy does). ASHA compares trials on it at the rungs
  ``grace, grace·r, grace·r², ...`` steps and stops those in the worse ``1 − 1/r``;
- ``loss/smoothed``, the raw loss; lower is better;
- ``rankme/backbone`` and ``rankme/projector`` (:mod:`lejepa_ray.train.rankme`), the effective rank
  of the embeddings of a fixed held-out batch at the trial's last checkpoint; higher is better.

``--select-by`` picks the one that ranks the trials and names the winner. Each trial also
reports ``loss/rel_change``, the relative change of its mean loss over its last window against
the window before; a trial whose loss still falls by more than ``plateau_tol`` is flagged as
still descending, because ranking unconverged runs is not what the paper claims.

Beside Tune's state the sweep writes ``sweep.json`` (what was swept, so that rerunning the
command resumes it), ``results.csv``, ``plot.png``, ``winner/`` (the best trial's backbone as a
timm model) and, with labels, ``validation.json`` and one ``validation_<metric>.png`` scatter
plot per label-free metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from lejepa_ray import storage
from lejepa_ray.config import (
    ConfigError,
    PretrainConfig,
    check_run,
    load_config,
    to_yaml,
    with_overrides,
)
from lejepa_ray.tune.space import Dimension, check_space, load_space, overrides, to_tune

METRIC = "selection_score/smoothed"
"""What ASHA early-stops trials by (mode: min); present in every report."""
REL_CHANGE = "loss/rel_change"


@dataclass(frozen=True)
class LabelFree:
    """A label-free metric a trial reports, and which way is better."""

    column: str
    """Its ``TrialRow`` field and ``results.csv`` column."""
    metric: str
    """The reported metric it is read from."""
    lower_is_better: bool
    label: str

    @property
    def better(self) -> str:
        """``lower`` or ``higher``: which way is better."""
        return "lower" if self.lower_is_better else "higher"


LABEL_FREE = (
    LabelFree("selection_score", METRIC, True, "loss / λ^α"),
    LabelFree("loss", "loss/smoothed", True, "raw loss"),
    LabelFree("rankme_backbone", "rankme/backbone", False, "RankMe (backbone)"),
    LabelFree("rankme_projector", "rankme/projector", False, "RankMe (projector)"),
)
SELECT_BY = {"rankme": "rankme_backbone", "score": "selection_score"}
"""``--select-by`` choices and the metric each ranks by."""
DEFAULT_SELECT_BY = "rankme"
"""What our measurements support (docs/sweeps.md: the 12-trial digits experiment)."""


def selected(select_by: str) -> LabelFree:
    """The label-free metric ``--select-by select_by`` ranks by."""
    return next(m for m in LABEL_FREE if m.column == SELECT_BY[select_by])


PROBES = ("linear_top1", "knn_top1")
SCHEDULERS = ("asha", "fifo")
SEARCHES = ("random", "optuna")
SPEC_FILE, RESULTS_FILE, PLOT_FILE = "sweep.json", "results.csv", "plot.png"
WINNER_DIR, VALIDATION_FILE, RUNS_DIR = "winner", "validation.json", "runs"
# Keys a trial's config gets from the sweep itself.
_RESERVED = ("name", "storage_path")


@dataclass
class SweepOptions:
    """One sweep: the space, the trials' shared config, and how Tune runs them."""

    space: str
    """Search space YAML (``tune_spaces/*.yaml``)."""
    config: str | None = None
    """Pretrain config YAML every trial starts from (then ``overrides``, then the space)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted ``key=value`` overrides for every trial; ``storage_path`` places the sweep."""
    name: str | None = None
    """Sweep directory under ``storage_path``; rerunning with the same name resumes it.
    None: ``sweep-<space>-<YYYYmmdd-HHMMSS>``."""
    samples: int = 4
    """Trials drawn from the space (times the combinations of its ``grid`` keys)."""
    scheduler: str = "asha"
    """``asha`` (early stopping on the selection score) or ``fifo`` (every trial runs all its
    steps)."""
    search: str = "random"
    """``random`` (Tune's variant generator) or ``optuna`` (TPE; the ``optuna`` extra)."""
    max_concurrent_trials: int = 1
    """Trials running at once; each needs its config's workers (``scaling.*``) and one CPU
    for its driver."""
    grace_steps: int | None = None
    """ASHA's first rung in optimizer steps. None: a quarter of ``optim.steps``."""
    reduction_factor: int = 2
    """ASHA keeps the best ``1/reduction_factor`` of the trials at each rung."""
    seed: int = 0
    """Seed of the search (which values are drawn)."""
    select_by: str = DEFAULT_SELECT_BY
    """What ranks the trials and picks the winner: ``rankme`` (``rankme/backbone``, higher is
    better; the default, because it ranked our 12-trial digits sweep best, docs/sweeps.md) or
    ``score`` (``selection_score/smoothed``, lower is better). ASHA stops trials by the score
    either way: it is the one metric in every report."""
    plateau_tol: float = 0.05
    """A trial whose mean loss over its last ``loss.score_smoothing_steps`` steps is more than
    this fraction below that of the window before is flagged as still descending."""
    validate_with_labels: str | None = None
    """Labelled data (a source name or path) to probe each trial's last checkpoint on (early-
    stopped trials too), then report Spearman ρ of every label-free metric against probe
    accuracy, with bootstrap intervals."""
    val_data: str | None = None
    """Labelled data the probes are scored on (``digits:val``, a ``val/`` folder); None: a hash
    80/20 split of ``validate_with_labels``."""
    export_winner: bool = True
    """Export the best trial's backbone to ``<sweep>/winner`` (local or object storage)."""

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}."
            )
        if self.search not in SEARCHES:
            raise ConfigError(
                f"--search must be one of {', '.join(SEARCHES)}, got {self.search!r}."
            )
        for flag, value, low in (
            ("--samples", self.samples, 1),
            ("--concurrent", self.max_concurrent_trials, 1),
            ("--reduction-factor", self.reduction_factor, 2),
        ):
            if value < low:
                raise ConfigError(f"{flag} must be >= {low}, got {value}.")
        if self.grace_steps is not None and self.grace_steps < 1:
            raise ConfigError(f"--grace-steps must be >= 1, got {self.grace_steps}.")
        if self.select_by not in SELECT_BY:
            raise ConfigError(
                f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}."
            )
        if not self.plateau_tol > 0:
            raise ConfigError(f"--plateau-tol must be > 0, got {self.plateau_tol}.")
        if self.val_data and not self.validate_with_labels:
            raise ConfigError("--val-data needs --validate-with-labels (the data to fit on).")


@dataclass
class TrialRow:
    """One trial in the ranked results (what ``results.csv`` holds)."""

    rank: int
    trial: str
    status: str
    """``completed``, ``stopped at step N`` (ASHA) or ``error: ...``."""
    step: int
    selection_score: float
    """The smoothed score of its last report (lower is better)."""
    loss: float
    """The smoothed raw training loss of its last report."""
    params: dict[str, Any]
    """The values it drew from the space (dotted keys)."""
    checkpoint: str | None
    knn_top1: float | None = None
    linear_top1: float | None = None
    rankme_backbone: float = math.nan
    """RankMe of the backbone features at its last checkpoint (higher is better)."""
    rankme_projector: float = math.nan
    """RankMe of the projector outputs at its last checkpoint."""
    rel_change: float = math.nan
    """Relative change of its mean loss over the last window against the window before
    (negative: still falling); NaN when it ran fewer than two windows."""
    descending: bool = False
    """Its loss still fell by more than the sweep's ``plateau_tol`` over its last window."""
    rising: bool = False
    """Its loss rose by more than ``plateau_tol`` over its last window (not a plateau either)."""

    @property
    def plateau(self) -> bool:
        """Its loss changed by at most ``plateau_tol`` over its last window."""
        return not (math.isnan(self.rel_change) or self.descending or self.rising)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def stopped(self) -> bool:
        return self.status.startswith("stopped")

    @property
    def failed(self) -> bool:
        return self.status.startswith("error")


@dataclass
class SweepResult:
    """What a sweep produced."""

    sweep_dir: str
    rows: list[TrialRow]
    """Ranked: completed trials by score, then early-stopped ones, then failed ones."""
    seconds: float
    """Wall time of ``Tuner.fit`` in this call (a resumed sweep: the resumed part)."""
    resumed: bool
    winner_dir: str | None
    validation: dict[str, Any] | None
    """Spearman ρ and the trials it was computed on (``--validate-with-labels``)."""
    interrupted: bool = False
    """Stopped by Ctrl+C (SIGINT) before every trial ended; ``rows`` is empty."""


@dataclass(frozen=True)
class _TrialSetup:
    """What every trial needs besides its sampled values (shipped with the trainable)."""

    base: PretrainConfig
    runs_dir: str
    validate_data: str | None
    val_data: str | None = None


def _trial(params: dict[str, Any], setup: _TrialSetup) -> None:
    """One Tune trial: a whole pretraining run, reported to Tune step by step; then, when asked
    for, the probes of its final backbone in one last report."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lejepa_ray.launch.driver import run

    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(setup.base, [*overrides(params), "probe.knn=false"])
    # Set, not parsed as an override: an all-digit id such as 28172_00000 would be read as
    # the integer 2817200000.
    cfg = replace(cfg, name=trial_id, storage_path=setup.runs_dir)
    result = run(cfg, callbacks=[TuneReportCallback()])
    if setup.validate_data and result.checkpoint:
        probes = probe_checkpoint(result.checkpoint, setup.validate_data, setup.val_data)
        tune.report({**result.metrics, **probes})


def probe_checkpoint(path: str, data: str, val_data: str | None = None) -> dict[str, float]:
    """``probe/knn_top1`` and ``probe/linear_top1`` of a checkpoint (local or at a URI), fitted
    on ``data`` and scored on ``val_data`` (None: a hash split of ``data``)."""
    from lejepa_ray.evaluate.frozen import evaluate

    result = evaluate(path, data, "both", val_data=val_data)
    return {"probe/knn_top1": result.knn_top1, "probe/linear_top1": result.linear_top1}


def sweep_name(opts: SweepOptions) -> str:
    return opts.name or f"sweep-{Path(opts.space).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def check(opts: SweepOptions) -> tuple[PretrainConfig, list[Dimension]]:
    """The trials' base config and the space, both checked; seconds, before Ray starts.

    Raises:
        ConfigError: an invalid config or space, a reserved key, or options that conflict.
    """
    if any(o.split("=", 1)[0].strip() == "name" for o in opts.overrides):
        raise ConfigError(
            "`name=` cannot be set for a sweep's trials: each is named after its "
            "Tune trial. Name the sweep with --name."
        )
    base = load_config(opts.config, opts.overrides)
    if opts.select_by == "rankme" and not base.logging.rankme_samples:
        raise ConfigError(
            "--select-by rankme needs RankMe at checkpoints, but logging.rankme_samples=0; "
            "drop that override or select by score."
        )
    space = load_space(opts.space)
    reserved = [d.key for d in space if d.key in _RESERVED]
    if reserved:
        raise ConfigError(f"{opts.space}: {reserved[0]} cannot be swept; the sweep sets it.")
    check_space(space, where=opts.space, config=opts.config, base=opts.overrides)
    check_run(with_overrides(base, overrides({d.key: d.corners()[0] for d in space})))
    if opts.search == "optuna":
        grid = [d.key for d in space if d.sampler == "grid"]
        if grid:
            raise ConfigError(
                f"{opts.space}: optuna cannot search `grid` keys ({', '.join(grid)});"
                " use `choice`, or --search random."
            )
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--search optuna needs Optuna: pip install 'lejepa-ray[optuna]'."
            ) from None
    return base, space


def run_sweep(opts: SweepOptions, *, print_fn=print) -> SweepResult:
    """Run (or resume) the sweep ``opts`` describes on the connected or a new local Ray
    instance; rank the trials, write the results, export the winner.

    Raises:
        ConfigError: before Ray starts, for an invalid space, config or options, or when a
            sweep of that name exists with other settings.
    """
    from ray import tune

    from lejepa_ray.launch.runtime import connect
    from lejepa_ray.runs import storage_root

    base, space = check(opts)
    name = sweep_name(opts)
    root = storage_root(base)
    sweep_dir = f"{root.rstrip('/')}/{name}"
    spec = {
        "space": {d.key: [d.sampler, list(d.values)] for d in space},
        "config": to_yaml(base),
        "samples": opts.samples,
        "scheduler": opts.scheduler,
        "search": opts.search,
        "seed": opts.seed,
    }
    # Validation options do not change what the trials train, but --val-data changes the
    # probes the trials report, so a resumed sweep must keep it.
    if opts.val_data:
        spec["val_data"] = opts.val_data
    saved = storage.read_text(f"{sweep_dir}/{SPEC_FILE}")
    if saved is not None and json.loads(saved) != spec:
        changed = sorted(k for k, v in json.loads(saved).items() if spec.get(k) != v)
        raise ConfigError(
            f"sweep {name!r} in {sweep_dir} was started with another "
            f"{', '.join(changed)}; rerun it with the same --space, --config, "
            "overrides and options to resume it, or give another --name."
        )
    trial_cpus = base.scaling.num_workers * base.scaling.cpus_per_worker + 1
    # The dashboard serves the state API, which Ray Train's placement-group cleaner polls to see
    # that the controller of a trial ASHA stopped is gone; without it the stopped trial's
    # workers' CPUs stay reserved and the next trial's data pipeline waits for them forever.
    connect(
        train_cpus=opts.max_concurrent_trials * trial_cpus,
        dashboard=True,
        verbose=base.logging.verbose,
        prefixes=True,
    )
    setup = _TrialSetup(base, f"{sweep_dir}/{RUNS_DIR}", opts.validate_with_labels, opts.val_data)
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), {"CPU": 1})
    resumed = saved is not None and tune.Tuner.can_restore(sweep_dir)
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
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="min",
                num_samples=opts.samples,
                scheduler=_scheduler(opts, base, space),
                search_alg=_searcher(opts),
            ),
            run_config=tune.RunConfig(name=name, storage_path=root),
        )
        print_fn(
            f"sweep {name}: {opts.samples} sample(s) of {opts.space}, {opts.scheduler}, "
            f"{opts.search} search, {opts.max_concurrent_trials} at a time; outputs in "
            f"{sweep_dir}"
        )
    start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    unfinished = _unfinished(
        sweep_dir, opts.samples * math.prod(len(d.values) for d in space if d.sampler == "grid")
    )
    if unfinished:  # Ctrl+C: Tune saved its state and returned
        print_fn(
            f"\nsweep {name} interrupted with {unfinished} unfinished trial(s); rerun the "
            "same command to resume it."
        )
        return SweepResult(sweep_dir, [], seconds, resumed, None, None, interrupted=True)
    rows = rank(grid, base, space, sweep_dir, opts.select_by, opts.plateau_tol)
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
        validation = validate(rows, opts.select_by)
        storage.write_text(f"{sweep_dir}/{VALIDATION_FILE}", json.dumps(validation, indent=2))
        for column, png in validation_plots(rows, name).items():
            storage.write_bytes(f"{sweep_dir}/validation_{column}.png", png)
        print_fn(format_validation(validation))
    return SweepResult(sweep_dir, rows, seconds, resumed, winner, validation)


def _unfinished(sweep_dir: str, expected: int) -> int:
    """Trials of the sweep that have not ended, by the state Tune saved (a trial running when
    Ctrl+C came is saved as pending, and resumes), counting those not yet created."""
    import logging

    from ray.tune import ExperimentAnalysis

    from lejepa_ray.compat import quiet_logger

    # It warns about trials without results yet, which are exactly what is being counted.
    with quiet_logger("ray.tune.analysis.experiment_analysis", logging.ERROR):
        trials = ExperimentAnalysis(sweep_dir).trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    return max(expected, len(trials)) - ended


def _max_steps(base: PretrainConfig, space: list[Dimension]) -> int:
    """The longest a trial can run: ``optim.steps`` of the config, or the space's largest."""
    dim = next((d for d in space if d.key == "optim.steps"), None)
    return max(int(v) for v in dim.corners()) if dim else base.optim.steps


def _scheduler(opts: SweepOptions, base: PretrainConfig, space: list[Dimension]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if opts.scheduler == "fifo":
        return FIFOScheduler()
    steps = _max_steps(base, space)
    grace = min(opts.grace_steps or max(1, steps // 4), steps)
    # A trial that reaches its last step ends by returning, not by being stopped: its final
    # checkpoint (and probe) must complete.
    return ASHAScheduler(
        time_attr="step",
        max_t=steps,
        grace_period=grace,
        reduction_factor=opts.reduction_factor,
        stop_last_trials=False,
    )


def _searcher(opts: SweepOptions):
    if opts.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(
            OptunaSearch(seed=opts.seed), max_concurrent=opts.max_concurrent_trials
        )
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune applies max_concurrent_trials only to searchers it builds itself; this one is built
    # here for its seed, so it gets the limit directly.
    return BasicVariantGenerator(random_state=opts.seed, max_concurrent=opts.max_concurrent_trials)


def rank(
    grid,
    base: PretrainConfig,
    space: list[Dimension],
    sweep_dir: str,
    select_by: str = DEFAULT_SELECT_BY,
    plateau_tol: float = 0.05,
) -> list[TrialRow]:
    """The trials of a Tune ``ResultGrid`` as rows: completed ones by the ``select_by`` metric
    (best first, in its direction), then those ASHA stopped (the same way), then failed ones."""
    from lejepa_ray.runs import latest_checkpoint

    keys = [d.key for d in space]
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        params = {k: (result.config or {}).get(k) for k in keys}
        trial = metrics.get("trial_id") or Path(result.path).name
        step = int(metrics.get("step", 0))
        steps = with_overrides(base, overrides(params)).optim.steps
        if result.error is not None:
            status = f"error: {str(result.error).strip().splitlines()[-1][:200]}"
        else:
            status = "completed" if step >= steps else f"stopped at step {step}"
        latest = latest_checkpoint(f"{sweep_dir}/{RUNS_DIR}/{trial}")
        # The label-free values of the checkpoint that is probed, so that both describe the
        # same weights: for a completed trial its final report, for one ASHA stopped its last
        # checkpoint (RankMe exists only there), else its last report.
        at = {**metrics, **latest.metrics} if latest else metrics
        rel_change = _number(at.get(REL_CHANGE))
        rows.append(
            TrialRow(
                rank=0,
                trial=trial,
                status=status,
                step=step,
                selection_score=_number(at.get(METRIC)),
                loss=_number(at.get("loss/smoothed")),
                params=params,
                checkpoint=latest.uri if latest else None,
                knn_top1=metrics.get("probe/knn_top1"),
                linear_top1=metrics.get("probe/linear_top1"),
                rankme_backbone=_number(at.get("rankme/backbone")),
                rankme_projector=_number(at.get("rankme/projector")),
                rel_change=rel_change,
                descending=rel_change < -plateau_tol,
                rising=rel_change > plateau_tol,
            )
        )
    metric = selected(select_by)
    column, lower = metric.column, metric.lower_is_better

    def order(row: TrialRow) -> tuple:
        group = 0 if row.completed else 2 if row.failed else 1
        value = getattr(row, column)
        missing = math.isnan(value)
        return group, missing, 0.0 if missing else value if lower else -value, row.trial

    rows.sort(key=order)
    for i, row in enumerate(rows, 1):
        row.rank = i
    return rows


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def probe_stopped(
    rows: list[TrialRow], data: str, val_data: str | None = None, print_fn=print
) -> None:
    """Probe the last checkpoint of every trial ASHA stopped (completed trials probe
    themselves), so that validation is not biased toward the survivors; fills the rows."""
    from lejepa_ray.train.checkpoint import CheckpointError

    todo = [r for r in rows if r.stopped and r.checkpoint and r.linear_top1 is None]
    for i, row in enumerate(todo, 1):
        print_fn(f"probing stopped trial {row.trial} ({i}/{len(todo)}): {row.checkpoint}")
        try:
            probes = probe_checkpoint(row.checkpoint, data, val_data)
        except (CheckpointError, OSError) as e:  # one unreadable checkpoint: the rest go on
            print_fn(f"  not probed, left out of the validation: {e}")
            continue
        row.knn_top1, row.linear_top1 = probes["probe/knn_top1"], probes["probe/linear_top1"]


def results_csv(rows: list[TrialRow], varied: list[Dimension]) -> str:
    """The ranked table as CSV: rank, trial, status, step, selection_score, loss, one column
    per swept key, knn_top1, linear_top1, rankme_backbone, rankme_projector, rel_change,
    descending, checkpoint."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = [d.key for d in varied]
    writer.writerow(
        [
            "rank",
            "trial",
            "status",
            "step",
            "selection_score",
            "loss",
            *keys,
            "knn_top1",
            "linear_top1",
            "rankme_backbone",
            "rankme_projector",
            "rel_change",
            "descending",
            "checkpoint",
        ]
    )
    for r in rows:
        writer.writerow(
            [
                r.rank,
                r.trial,
                r.status,
                r.step,
                r.selection_score,
                r.loss,
                *(r.params[k] for k in keys),
                _blank(r.knn_top1),
                _blank(r.linear_top1),
                _blank(r.rankme_backbone),
                _blank(r.rankme_projector),
                _blank(r.rel_change),
                r.descending,
                r.checkpoint or "",
            ]
        )
    return out.getvalue()


def _blank(value: float | None) -> Any:
    """An empty cell for what was not measured (None or NaN)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def format_table(
    rows: list[TrialRow], varied: list[Dimension], select_by: str = DEFAULT_SELECT_BY
) -> str:
    """The ranked trials as an aligned text table for the console."""
    keys = [d.key for d in varied]
    probes = any(r.linear_top1 is not None for r in rows)
    rankme = any(not math.isnan(r.rankme_backbone) for r in rows)
    head = [
        "rank",
        "trial",
        "score",
        "loss",
        *(["rankme bb/proj"] if rankme else []),
        "Δloss",
        "step",
        *keys,
        *(["kNN", "linear"] if probes else []),
        "status",
    ]
    body = []
    for r in rows:
        cells = [str(r.rank), r.trial, f"{r.selection_score:.4f}", f"{r.loss:.4f}"]
        if rankme:
            cells.append(f"{_num(r.rankme_backbone, '.1f')}/{_num(r.rankme_projector, '.1f')}")
        cells += [
            _num(r.rel_change, "+.1%"),
            str(r.step),
            *(_short(r.params[k]) for k in keys),
        ]
        if probes:
            cells += [_pct(r.knn_top1), _pct(r.linear_top1)]
        note = ", still descending" if r.descending else ", loss rising" if r.rising else ""
        body.append([*cells, r.status + note])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in [head, *body]
    ]
    metric = selected(select_by)
    return "\n".join(["", f"trials ranked by {metric.metric} ({metric.better} is better):", *lines])


def format_convergence(rows: list[TrialRow], window: int, tol: float) -> str:
    """One line: how many completed trials reached a plateau, and which did not."""
    done = [r for r in rows if r.completed and not math.isnan(r.rel_change)]
    if not done:
        return (
            f"convergence not measured: no completed trial ran two windows of {window} steps "
            "(loss.score_smoothing_steps)."
        )
    falling = [r.trial for r in done if r.descending]
    rising = [r.trial for r in done if r.rising]
    line = (
        f"convergence: {sum(r.plateau for r in done)} of {len(done)} completed trials on a "
        f"plateau (mean loss of the last {window} steps within {tol:.3g} of the {window} "
        "before, relative)"
    )
    if falling:
        line += (
            f"; still descending: {', '.join(falling)}. Ranking unconverged runs is not what "
            "the LeJEPA paper claims: give them more optim.steps"
        )
    if rising:
        line += f"; loss rising: {', '.join(rising)}"
    return line + "."


def _num(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot_png(rows: list[TrialRow], varied: list[Dimension], title: str) -> bytes:
    """PNG: the selection score of every trial against each swept key (log axis for
    log-uniform and wide numeric ranges; names on a categorical axis); completed trials
    filled, early-stopped ones hollow, the winner starred."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if not math.isnan(r.selection_score)]
    dims = varied or [Dimension("trial", "fixed", ())]
    fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 4), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        values = [r.params.get(dim.key, r.trial) if dim.key != "trial" else r.trial for r in scored]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            x = values
            if (
                values
                and min(values) > 0
                and (dim.sampler == "loguniform" or max(values) / min(values) >= 10)
            ):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            labels = sorted({str(v) for v in values})
            x = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        for xi, r in zip(x, scored, strict=True):
            ax.scatter(
                xi,
                r.selection_score,
                s=160 if r.rank == 1 else 36,
                marker="*" if r.rank == 1 else "o",
                facecolors="C0" if r.completed else "none",
                edgecolors="C0",
            )
        ax.set_xlabel(dim.key)
        ax.set_ylabel(METRIC)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: lower is better (★ winner, hollow: stopped early)")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def _export_winner(rows: list[TrialRow], sweep_dir: str, print_fn) -> str | None:
    from lejepa_ray.evaluate.export import export

    best = next((r for r in rows if r.completed and r.checkpoint), None)
    if best is None:
        print_fn("no trial completed with a checkpoint; nothing to export.")
        return None
    out = f"{sweep_dir}/{WINNER_DIR}"
    result = export(best.checkpoint, out)
    print_fn(
        f"\nwinner {best.trial} (score {best.selection_score:.4f}, RankMe "
        f"{_num(best.rankme_backbone, '.1f')}, step {result.step}): "
        f"{result.architecture} backbone exported to {out}\nload it: {result.load_line()}"
    )
    return out


def spearman_interval(
    x: list[float], y: list[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman ρ of ``x`` and ``y`` (one value per trial) and its percentile bootstrap
    interval at ``level``: the trials are resampled with replacement ``resamples`` times
    (seeded), and resamples in which either side is constant (ρ undefined) are dropped.

    Returns:
        (ρ, low, high); NaN where ρ is undefined (fewer than 3 trials, or a constant side).
    """
    import numpy as np
    from scipy.stats import spearmanr

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan, math.nan, math.nan
    rho = float(spearmanr(xs, ys).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, len(xs), len(xs))
        if np.ptp(xs[i]) > 0 and np.ptp(ys[i]) > 0:
            draws.append(spearmanr(xs[i], ys[i]).statistic)
    if not draws:
        return rho, math.nan, math.nan
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(low), float(high)


def validate(rows: list[TrialRow], select_by: str = DEFAULT_SELECT_BY) -> dict[str, Any]:
    """Spearman ρ, with a bootstrap 95% interval, of every label-free metric against each
    probe's accuracy, over the trials with probe results: completed and early-stopped ones
    (leaving the stopped ones out would bias ρ toward the survivors), and, in
    ``completed_only``, over the completed ones alone (stopped trials trained fewer steps,
    which by itself can make the metrics and the accuracy agree).

    ``rho[metric~probe]`` is the plain ρ; ``agreement[metric~probe]`` is ρ signed so that +1
    means the metric, read in its own direction (lower score, higher RankMe), ranks the trials
    exactly as the probe does. What is undefined (too few trials, a constant side) is None, so
    the result is strict JSON."""
    probed = [r for r in rows if r.linear_top1 is not None and not r.failed]
    out: dict[str, Any] = {
        "trials": len(probed),
        "completed": sum(r.completed for r in probed),
        "stopped": sum(r.stopped for r in probed),
        "still_descending": [r.trial for r in probed if r.descending],
        "select_by": select_by,
    }
    if len(probed) < 3:
        out["note"] = f"Spearman ρ needs at least 3 trials with probes; got {len(probed)}."
        return out
    out.update(_correlations(probed))
    out["completed_only"] = _correlations([r for r in probed if r.completed])
    metric = selected(select_by)
    column, lower = metric.column, metric.lower_is_better
    done = [r for r in probed if r.completed and not math.isnan(getattr(r, column))]
    if done:
        pick = (min if lower else max)(done, key=lambda r: getattr(r, column))
        out["label_free_pick"] = {"trial": pick.trial, "linear_top1": pick.linear_top1}
    best = max(probed, key=lambda r: r.linear_top1)
    out["best_by_labels"] = {"trial": best.trial, "linear_top1": best.linear_top1}
    out["rows"] = [_json_safe(asdict(r)) for r in probed]
    return out


def _correlations(rows: list[TrialRow]) -> dict[str, dict[str, Any]]:
    """``rho``, ``interval95``, ``agreement`` and ``n`` for every metric~probe pair."""
    out: dict[str, dict[str, Any]] = {"rho": {}, "interval95": {}, "agreement": {}, "n": {}}
    for metric in LABEL_FREE:
        have = [r for r in rows if not math.isnan(getattr(r, metric.column))]
        sign = -1.0 if metric.lower_is_better else 1.0
        for probe in PROBES:
            key = f"{metric.column}~{probe}"
            rho, low, high = spearman_interval(
                [getattr(r, metric.column) for r in have], [getattr(r, probe) for r in have]
            )
            out["rho"][key] = _finite(rho)
            out["interval95"][key] = [_finite(low), _finite(high)]
            out["agreement"][key] = _finite(sign * rho)
            out["n"][key] = len(have)
    return out


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _finite(v) if isinstance(v, float) else v for k, v in row.items()}


def format_validation(v: dict[str, Any]) -> str:
    if "note" in v:
        return v["note"]
    lines = [
        f"\nlabel-free metrics against probe accuracy over {v['trials']} trials "
        f"({v['completed']} completed, {v['stopped']} stopped early); Spearman ρ [bootstrap "
        "95% interval]; agreement = ρ in the metric's own direction (+1: ranks exactly as "
        "the probe):"
    ]
    for metric in LABEL_FREE:
        cells = []
        for probe, name in zip(PROBES, ("linear", "kNN"), strict=True):
            key = f"{metric.column}~{probe}"
            rho, (low, high) = v["rho"][key], v["interval95"][key]
            if rho is None:
                cells.append(f"vs {name} -")
                continue
            interval = "[-]" if low is None else f"[{low:+.2f}, {high:+.2f}]"
            cells.append(f"vs {name} ρ {rho:+.2f} {interval} agreement {v['agreement'][key]:+.2f}")
        n = v["n"][f"{metric.column}~linear_top1"]
        lines.append(
            f"  {metric.label:19s} ({metric.better} is better, n={n}): " + "; ".join(cells)
        )
    if v["stopped"]:
        only = v["completed_only"]
        cells = [
            f"{m.label} {_signed(only['agreement'][f'{m.column}~linear_top1'])}" for m in LABEL_FREE
        ]
        lines.append(
            f"  completed trials only (n={v['completed']}), agreement with linear: "
            + ", ".join(cells)
        )
    best = v["best_by_labels"]
    pick = v.get("label_free_pick")
    chosen = (
        f"picked without labels (--select-by {v['select_by']}): {pick['trial']} (linear "
        f"{pick['linear_top1']:.3f}); "
        if pick
        else ""
    )
    lines.append(f"  {chosen}best by labels: {best['trial']} (linear {best['linear_top1']:.3f})")
    if v["still_descending"]:
        lines.append(
            f"  {len(v['still_descending'])} of these trials were still descending: their ρ "
            "ranks unconverged runs."
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def validation_plots(rows: list[TrialRow], title: str) -> dict[str, bytes]:
    """One PNG per label-free metric (keyed by its column): linear and kNN top-1 against the
    metric, every probed trial coloured by its λ (log scale) when λ was swept; faded diamonds
    for trials stopped early."""
    import matplotlib
    import matplotlib.colors

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probed = [r for r in rows if r.linear_top1 is not None and not r.failed]
    lams = [r.params.get("loss.lam") for r in probed]
    by_lam = all(isinstance(x, int | float) and x > 0 for x in lams) and len(set(lams)) > 1
    norm = matplotlib.colors.LogNorm(min(lams), max(lams)) if by_lam else None
    out = {}
    for metric in LABEL_FREE:
        have = [r for r in probed if not math.isnan(getattr(r, metric.column))]
        if not have:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False, layout="constrained")
        for ax, probe, name in zip(axes[0], PROBES, ("linear", "kNN"), strict=True):
            x = [getattr(r, metric.column) for r in have]
            y = [getattr(r, probe) for r in have]
            done = [r.completed for r in have]
            for filled in (True, False):
                idx = [i for i, d in enumerate(done) if d == filled]
                if not idx:
                    continue
                if by_lam:
                    lam = [have[i].params["loss.lam"] for i in idx]
                    kwargs: dict[str, Any] = dict(c=lam, cmap="viridis", norm=norm)
                else:
                    kwargs = dict(c="C0")
                points = ax.scatter(
                    [x[i] for i in idx],
                    [y[i] for i in idx],
                    s=48,
                    marker="o" if filled else "D",
                    edgecolors="k",
                    linewidths=0.6 if filled else 1.2,
                    alpha=1.0 if filled else 0.5,
                    **kwargs,
                )
            ax.set_xlabel(f"{metric.metric} ({metric.better} is better)")
            ax.set_ylabel(f"{name} top-1")
            ax.grid(alpha=0.3)
        if by_lam:
            fig.colorbar(points, ax=axes[0].tolist(), label="λ (loss.lam)")
        fig.suptitle(f"{title}: {metric.label} against the probes (diamonds: stopped early)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[metric.column] = buf.getvalue()
    return out
