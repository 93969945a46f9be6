"""Ray Tune sweeps over the pretrain config, ranked without labels by the selection score.

A sweep is a Tune experiment in ``storage_path/<name>``. Each trial is one pretraining run
(the Ray Train v2 pattern): a Tune function trial, :func:`_trial`, builds its config (the
sweep's config and overrides, then the values it drew from the search space) and calls
:func:`lejepa_ray.pretrain.run`, whose TorchTrainer forwards every report of rank 0 to Tune
through ``TuneReportCallback``. Trial ``T``'s run, with its checkpoints and TensorBoard events,
is ``<sweep>/runs/T``.

Trials are ranked by ``selection_score/smoothed``: the training loss over λ^α, averaged over
the last ``loss.score_smoothing_steps`` steps; lower is better (the LeJEPA paper finds it
ranks runs as their linear-probe accuracy does). ASHA compares trials on it at the rungs
``grace, grace·r, grace·r², ...`` steps and stops those in the worse ``1 − 1/r``.

Beside Tune's state the sweep writes ``sweep.json`` (what was swept, so that rerunning the
command resumes it), ``results.csv``, ``plot.png``, ``winner/`` (the best trial's backbone as a
timm model) and, with labels, ``validation.json``.
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
from lejepa_ray.metrics import is_local
from lejepa_ray.space import Dimension, check_space, load_space, overrides, to_tune

METRIC = "selection_score/smoothed"
"""What trials are ranked and early-stopped by (mode: min)."""
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
    validate_with_labels: str | None = None
    """Labelled data (a source name or path) to probe each completed trial's backbone on,
    then report Spearman ρ of the score and of the raw loss against probe accuracy."""
    export_winner: bool = True
    """Export the best trial's backbone to ``<sweep>/winner`` (local storage only)."""

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

    @property
    def completed(self) -> bool:
        return self.status == "completed"


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


def _trial(params: dict[str, Any], setup: _TrialSetup) -> None:
    """One Tune trial: a whole pretraining run, reported to Tune step by step; then, when asked
    for, the probes of its final backbone in one last report."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lejepa_ray.pretrain import run

    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(setup.base, [*overrides(params), "probe.knn=false"])
    # Set, not parsed as an override: an all-digit id such as 28172_00000 would be read as
    # the integer 2817200000.
    cfg = replace(cfg, name=trial_id, storage_path=setup.runs_dir)
    result = run(cfg, callbacks=[TuneReportCallback()])
    if setup.validate_data and result.checkpoint:
        tune.report({**result.metrics, **probe_checkpoint(result.checkpoint, setup.validate_data)})


def probe_checkpoint(path: str, data: str) -> dict[str, float]:
    """``probe/knn_top1`` and ``probe/linear_top1`` of a checkpoint (local or at a URI)."""
    from ray.train import Checkpoint

    from lejepa_ray.evaluate import evaluate

    with Checkpoint(path).as_directory() as local:
        result = evaluate(local, data, "both")
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

    from lejepa_ray.pretrain import storage_root
    from lejepa_ray.runtime import connect

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
    setup = _TrialSetup(base, f"{sweep_dir}/{RUNS_DIR}", opts.validate_with_labels)
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
    rows = rank(grid, base, space, sweep_dir)
    varied = [d for d in space if d.sampler != "fixed"]
    storage.write_text(f"{sweep_dir}/{RESULTS_FILE}", results_csv(rows, varied))
    storage.write_bytes(f"{sweep_dir}/{PLOT_FILE}", plot_png(rows, varied, name))
    print_fn(format_table(rows, varied))
    winner = _export_winner(rows, sweep_dir, print_fn) if opts.export_winner else None
    validation = None
    if opts.validate_with_labels:
        validation = validate(rows)
        storage.write_text(f"{sweep_dir}/{VALIDATION_FILE}", json.dumps(validation, indent=2))
        print_fn(format_validation(validation))
    return SweepResult(sweep_dir, rows, seconds, resumed, winner, validation)


def _unfinished(sweep_dir: str, expected: int) -> int:
    """Trials of the sweep that have not ended, by the state Tune saved (a trial running when
    Ctrl+C came is saved as pending, and resumes), counting those not yet created."""
    import logging

    from ray.tune import ExperimentAnalysis

    from lejepa_ray.runtime import quiet_logger

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


def rank(grid, base: PretrainConfig, space: list[Dimension], sweep_dir: str) -> list[TrialRow]:
    """The trials of a Tune ``ResultGrid`` as rows: completed ones by score (lower first),
    then those ASHA stopped (by score), then failed ones."""
    from lejepa_ray.checkpoint import latest_checkpoint

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
        rows.append(
            TrialRow(
                0,
                trial,
                status,
                step,
                float(metrics.get(METRIC, math.nan)),
                float(metrics.get("loss/smoothed", math.nan)),
                params,
                latest[0] if latest else None,
                metrics.get("probe/knn_top1"),
                metrics.get("probe/linear_top1"),
            )
        )

    def order(row: TrialRow) -> tuple:
        group = 0 if row.completed else 2 if row.status.startswith("error") else 1
        score = row.selection_score
        return group, math.isnan(score), score if not math.isnan(score) else 0.0, row.trial

    rows.sort(key=order)
    for i, row in enumerate(rows, 1):
        row.rank = i
    return rows


def results_csv(rows: list[TrialRow], varied: list[Dimension]) -> str:
    """The ranked table as CSV: rank, trial, status, step, selection_score, loss, one column
    per swept key, knn_top1, linear_top1, checkpoint."""
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
                r.checkpoint or "",
            ]
        )
    return out.getvalue()


def _blank(value: float | None) -> Any:
    return "" if value is None else value


def format_table(rows: list[TrialRow], varied: list[Dimension]) -> str:
    """The ranked trials as an aligned text table for the console."""
    keys = [d.key for d in varied]
    probes = any(r.linear_top1 is not None for r in rows)
    head = [
        "rank",
        "trial",
        "score",
        "loss",
        "step",
        *keys,
        *(["kNN", "linear"] if probes else []),
        "status",
    ]
    body = []
    for r in rows:
        cells = [
            str(r.rank),
            r.trial,
            f"{r.selection_score:.4f}",
            f"{r.loss:.4f}",
            str(r.step),
            *(_short(r.params[k]) for k in keys),
        ]
        if probes:
            cells += [_pct(r.knn_top1), _pct(r.linear_top1)]
        body.append([*cells, r.status])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in [head, *body]
    ]
    return "\n".join(
        ["", "trials ranked by selection_score (loss / λ^α, lower is better):", *lines]
    )


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
    from lejepa_ray.export import export

    best = next((r for r in rows if r.completed and r.checkpoint), None)
    if best is None:
        print_fn("no trial completed with a checkpoint; nothing to export.")
        return None
    out = f"{sweep_dir}/{WINNER_DIR}"
    if not is_local(out):
        print_fn(
            f"winner {best.trial}: {best.checkpoint}; copy it to local disk and run "
            "`lejepa-ray export` on it (export writes local folders only)."
        )
        return None
    result = export(best.checkpoint, out)
    print_fn(
        f"\nwinner {best.trial} (score {best.selection_score:.4f}, step {result.step}): "
        f"{result.architecture} backbone exported to {out}\nload it: {result.load_line()}"
    )
    return out


def validate(rows: list[TrialRow]) -> dict[str, Any]:
    """Spearman ρ of the selection score, and of the raw loss, against each probe's accuracy
    over the completed trials with probe results. ρ = −1 is a perfect label-free ranking
    (a lower score exactly when the accuracy is higher)."""
    from scipy.stats import spearmanr

    done = [r for r in rows if r.completed and r.linear_top1 is not None]
    out: dict[str, Any] = {"trials": len(done), "rho": {}}
    if len(done) < 3:
        out["note"] = f"Spearman ρ needs at least 3 completed trials with probes; got {len(done)}."
        return out
    for x in ("selection_score", "loss"):
        for y in ("linear_top1", "knn_top1"):
            rho = spearmanr([getattr(r, x) for r in done], [getattr(r, y) for r in done])
            out["rho"][f"{x}~{y}"] = float(rho.statistic)
    best_by_labels = max(done, key=lambda r: r.linear_top1)
    out["label_free_pick"] = {"trial": done[0].trial, "linear_top1": done[0].linear_top1}
    out["best_by_labels"] = {
        "trial": best_by_labels.trial,
        "linear_top1": best_by_labels.linear_top1,
    }
    out["rows"] = [asdict(r) for r in done]
    return out


def format_validation(v: dict[str, Any]) -> str:
    if "note" in v:
        return v["note"]
    rho = v["rho"]
    pick, best = v["label_free_pick"], v["best_by_labels"]
    return "\n".join(
        [
            f"\nlabel-free selection over {v['trials']} completed trials (Spearman ρ; −1: lower "
            "score exactly when accuracy is higher):",
            f"  selection_score vs linear probe {rho['selection_score~linear_top1']:+.3f}, "
            f"vs kNN {rho['selection_score~knn_top1']:+.3f}",
            f"  raw loss        vs linear probe {rho['loss~linear_top1']:+.3f}, "
            f"vs kNN {rho['loss~knn_top1']:+.3f}",
            f"  picked without labels: {pick['trial']} (linear {pick['linear_top1']:.3f}); best by "
            f"labels: {best['trial']} (linear {best['linear_top1']:.3f})",
        ]
    )
