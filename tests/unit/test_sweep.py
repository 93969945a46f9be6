"""Sweeps: option and space checks, ranking, results, Spearman validation; a real ASHA sweep
with probes, interrupted with Ctrl+C and resumed, through the command line.

Multi-process, Ray and slow tests: ``tests/integration/test_sweep.py``."""

from __future__ import annotations

import ast
import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import TINY
from sweep_helpers import _space

from lejepa_ray.config import ConfigError
from lejepa_ray.tune.options import SweepOptions, check
from lejepa_ray.tune.ranking import METRIC, REL_CHANGE, TrialRow, TrialStatus, rank
from lejepa_ray.tune.report import plot_png, results_csv
from lejepa_ray.tune.space import Dimension
from lejepa_ray.tune.sweep import run_sweep
from lejepa_ray.tune.validation import validate

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "platform" / "lejepa_ray" / "configs" / "quickstart.yaml")

# What each module of tune/ may import from tune/: the driver (sweep) uses every step, and no
# step uses the driver. Only the driver, the Tune experiment it runs (tuner), the console's
# callback and the space's Tune domains import Ray.
TUNE_IMPORTS = {
    "space": set(),
    "ranking": {"space"},
    "report": {"ranking", "space"},
    "validation": {"ranking"},
    "options": {"ranking", "space"},
    "console": {"ranking"},
    "tuner": {"console", "options", "ranking", "space"},
    "sweep": {"options", "ranking", "report", "space", "tuner", "validation"},
}


def test_the_modules_of_tune_import_only_the_steps_below_them():
    tune_dir = ROOT / "platform" / "lejepa_ray" / "tune"
    assert {p.stem for p in tune_dir.glob("*.py")} - {"__init__"} == set(TUNE_IMPORTS)
    for module, allowed in TUNE_IMPORTS.items():
        imported = set()
        for node in ast.walk(ast.parse((tune_dir / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                if node.module == "lejepa_ray.tune":  # from lejepa_ray.tune import sweep
                    imported.update(f"lejepa_ray.tune.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        tune = {m.removeprefix("lejepa_ray.tune.") for m in imported if "lejepa_ray.tune." in m}
        assert tune <= allowed, f"tune/{module}.py imports {sorted(tune - allowed)}"
        ray = sorted(m for m in imported if m == "ray" or m.startswith("ray."))
        # Ray: the space's samplers, Tune's callback interface (console), the Tune experiment
        # (tuner), and the wiring.
        assert module in ("space", "console", "tuner", "sweep") or not ray, (
            f"tune/{module}.py imports {ray}"
        )


LAMBDA = "loss.lam:\n  loguniform: [0.01, 0.3]\n"


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        (LAMBDA, {"overrides": ["name=x"]}, "each is named after its Tune trial"),
        ("name:\n  choice: [a, b]\n", {}, "name cannot be swept"),
        (
            "model.name:\n  grid: [resnet18, resnet34]\n",
            {"search": "optuna"},
            "optuna cannot search `grid` keys",
        ),
        ("loss.lam:\n  choice: [0.05, 2.0]\n", {}, "loss.lam=2.0 is not a valid value"),
        (
            LAMBDA,
            {"overrides": ["logging.rankme_samples=0"], "select_by": "rankme"},
            "select_by=rankme needs RankMe at every report",
        ),
        (
            LAMBDA,
            {"overrides": ["scaling.batch_size=1", "scaling.num_workers=1"]},
            "needs at least 2",
        ),
    ],
)
def test_check_rejects_what_cannot_run(tmp_path, text, kwargs, message):
    opts = SweepOptions(
        space=_space(tmp_path, text),
        config=QUICKSTART,
        overrides=kwargs.pop("overrides", []),
        **kwargs,
    )
    with pytest.raises(ConfigError, match=message):
        check(opts)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"scheduler": "hyperband"},
            "scheduler='hyperband' is invalid: expected one of asha",
        ),
        ({"search": "bayes"}, "search='bayes' is invalid: expected one of random, optuna"),
        ({"samples": 0}, "samples=0 is invalid: expected >= 1"),
        ({"reduction_factor": 1}, "reduction_factor=1 is invalid: expected >= 2"),
        ({"select_by": "probe"}, "select_by='probe' is invalid: expected one of rankme, score"),
        ({"plateau_tol": 0}, "plateau_tol=0 is invalid: expected > 0"),
        ({"val_data": "digits:val"}, "expected unset unless validate_with_labels is set"),
    ],
)
def test_options_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SweepOptions(space="x.yaml", **kwargs)


def test_searchers_seed_and_limit_concurrency(tmp_path):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from lejepa_ray.tune.tuner import _searcher

    random = _searcher(SweepOptions(space="x", concurrent=3, search_seed=7))
    assert isinstance(random, BasicVariantGenerator) and random.max_concurrent == 3
    optuna = _searcher(SweepOptions(space="x", search="optuna", concurrent=2))
    assert isinstance(optuna, ConcurrencyLimiter) and optuna.max_concurrent == 2
    assert isinstance(optuna.searcher, OptunaSearch)


def test_asha_rungs_follow_the_steps_a_trial_runs(tmp_path):
    from lejepa_ray.config import load_config
    from lejepa_ray.tune.tuner import _scheduler

    base = load_config(QUICKSTART)  # 150 steps; the space's trials run 40
    space = [Dimension("optim.steps", "fixed", (40,))]
    asha = _scheduler(SweepOptions(space="x"), base, space)
    assert (asha._max_t, asha._brackets[0]._rungs[-1][0]) == (40, 10)
    ranged = [Dimension("optim.steps", "randint", (20, 81))]
    assert _scheduler(SweepOptions(space="x", grace_steps=5), base, ranged)._max_t == 80


@pytest.mark.parametrize(
    ("select_by", "metric", "mode", "every_report"),
    [("rankme", "rankme/backbone", "max", True), ("score", METRIC, "min", False)],
)
def test_asha_stops_and_the_search_draws_by_the_select_by_metric(
    tmp_path, select_by, metric, mode, every_report
):
    from lejepa_ray.tune.tuner import _tune_config

    space_file = tmp_path / "space.yaml"
    space_file.write_text("loss.lam:\n  loguniform: [0.01, 0.3]\n")
    opts = SweepOptions(space=str(space_file), select_by=select_by, overrides=TINY)
    base, space = check(opts)
    # Tune refuses a report without the metric, so RankMe must then be in every report.
    assert base.logging.rankme_every_report is every_report
    tune_config = _tune_config(opts, base, space)
    assert (tune_config.metric, tune_config.mode) == (metric, mode)
    assert tune_config.scheduler._metric is None  # Tune hands it TuneConfig's metric and mode


def test_asha_never_stops_a_trial_on_its_last_step(tmp_path):
    from types import SimpleNamespace as Trial

    from ray.tune.schedulers import TrialScheduler

    from lejepa_ray.config import load_config
    from lejepa_ray.tune.tuner import _scheduler

    # 8 steps, grace 2, r = 2: rungs at 2, 4 and 8, the last one on the trial's final step.
    base = load_config(QUICKSTART, TINY)
    asha = _scheduler(SweepOptions(space="x", grace_steps=2), base, [])
    asha.set_search_properties(METRIC, "min")
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [8, 4, 2]
    good, bad = Trial(trial_id="good", config={}), Trial(trial_id="bad", config={})
    for trial in (good, bad):
        asha.on_trial_add(None, trial)
    for step in (2, 4, 8):
        assert asha.on_trial_result(None, good, {"step": step, METRIC: 1.0}) == "CONTINUE"
    # bad ties good at the first rungs, then is worse at the last: recorded, not stopped.
    for step in (2, 4):
        assert asha.on_trial_result(None, bad, {"step": step, METRIC: 1.0}) == "CONTINUE"
    assert asha.on_trial_result(None, bad, {"step": 8, METRIC: 5.0}) == TrialScheduler.CONTINUE
    assert asha._brackets[0]._rungs[0][1] == {"good": -1.0, "bad": -5.0}
    worse = Trial(trial_id="worse", config={})
    asha.on_trial_add(None, worse)
    assert asha.on_trial_result(None, worse, {"step": 2, METRIC: 9.0}) == TrialScheduler.STOP


def test_asha_never_stops_a_shorter_trial_on_its_own_last_step():
    from types import SimpleNamespace as Trial

    from ray.tune.schedulers import TrialScheduler

    from lejepa_ray.config import load_config
    from lejepa_ray.tune.tuner import _scheduler

    # optim.steps sampled in [4, 8]: max_t 8, grace 2, rungs at 2, 4 and 8. A 4-step trial
    # worse than the others at the rung on step 4 ends there anyway: recorded, not stopped.
    base = load_config(QUICKSTART, TINY)
    space = [Dimension("optim.steps", "choice", (4, 8))]
    asha = _scheduler(SweepOptions(space="x", grace_steps=2), base, space)
    asha.set_search_properties(METRIC, "min")
    long, short = (
        Trial(trial_id="long", config={"optim.steps": 8}),
        Trial(trial_id="short", config={"optim.steps": 4}),
    )
    for trial in (long, short):
        asha.on_trial_add(None, trial)
    for step in (2, 4):
        assert asha.on_trial_result(None, long, {"step": step, METRIC: 1.0}) == "CONTINUE"
    assert asha.on_trial_result(None, short, {"step": 2, METRIC: 1.0}) == "CONTINUE"
    assert asha.on_trial_result(None, short, {"step": 4, METRIC: 5.0}) == TrialScheduler.CONTINUE
    # The same report from an 8-step trial is stopped: step 4 is not its last.
    mid = Trial(trial_id="mid", config={"optim.steps": 8})
    asha.on_trial_add(None, mid)
    assert asha.on_trial_result(None, mid, {"step": 2, METRIC: 1.0}) == "CONTINUE"
    assert asha.on_trial_result(None, mid, {"step": 4, METRIC: 9.0}) == TrialScheduler.STOP


def _result(trial, step, score, loss, lam, error=None, probes=None, history=None, **extra):
    metrics = {
        "trial_id": trial,
        "step": step,
        METRIC: score,
        "loss/smoothed": loss,
        **extra,
        **(probes or {}),
    }
    return SimpleNamespace(
        metrics=metrics,
        config={"loss.lam": lam},
        error=error,
        path=f"/x/{trial}",
        metrics_dataframe=history,
    )


def test_rank_orders_completed_then_stopped_then_failed(tmp_path):
    from lejepa_ray.config import load_config

    base = load_config(QUICKSTART, TINY)
    space = [Dimension("loss.lam", "loguniform", (0.01, 0.3))]
    grid = [
        _result("a", 8, 3.0, 0.9, 0.05),
        _result("b", 2, 1.0, 0.5, 0.1),
        _result("c", 8, 2.0, 0.8, 0.02),
        _result("d", 4, math.nan, math.nan, 0.2, error=RuntimeError("boom\nbad λ")),
    ]
    rows = rank(grid, base, space, str(tmp_path), select_by="score")
    assert [(r.rank, r.trial, r.status) for r in rows] == [
        (1, "c", TrialStatus.COMPLETED),
        (2, "a", TrialStatus.COMPLETED),
        (3, "b", TrialStatus.STOPPED),
        (4, "d", TrialStatus.FAILED),
    ]
    # The text the table and results.csv have always shown.
    assert [r.status_text for r in rows] == [
        "completed",
        "completed",
        "stopped at step 2",
        "error: bad λ",
    ]
    silent = _result("e", 4, math.nan, math.nan, 0.2, error=RuntimeError())
    assert rank([silent], base, space, str(tmp_path))[0].status_text == "error: RuntimeError"
    table = list(csv.reader(io.StringIO(results_csv(rows, space))))
    assert table[0] == [
        "rank",
        "trial",
        "status",
        "step",
        "selection_score",
        "loss",
        "loss.lam",
        "knn_top1",
        "linear_top1",
        "rankme_backbone",
        "rankme_projector",
        "rel_change",
        "descending",
        "checkpoint",
    ]
    assert table[1][:7] == ["1", "c", "completed", "8", "2.0", "0.8", "0.02"]
    png = plot_png(rows, space, "test")
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_rank_by_rankme_takes_it_from_the_last_checkpoint_and_flags_unconverged_trials(
    tmp_path, monkeypatch
):
    import lejepa_ray.runs
    from lejepa_ray.config import load_config
    from lejepa_ray.tune.report import format_convergence, format_table

    base = load_config(QUICKSTART, TINY)
    space = [Dimension("loss.lam", "loguniform", (0.01, 0.3))]
    # b was stopped at step 6; its last checkpoint (step 4) is what gets probed, so its values
    # are that checkpoint's, not those of its last report.
    at_b = {METRIC: 2.5, "loss/smoothed": 0.7, "rankme/backbone": 9.0, "rankme/projector": 5.0}
    monkeypatch.setattr(
        lejepa_ray.runs,
        "latest_checkpoint",
        lambda run_dir: (
            SimpleNamespace(uri="/ck/b", metrics={**at_b, REL_CHANGE: -0.2})
            if run_dir.endswith("/b")
            else None
        ),
    )
    grid = [
        _result("a", 8, 1.0, 0.5, 0.05, **{"rankme/backbone": 3.0, "rankme/projector": 2.0}),
        _result("b", 6, 2.0, 0.6, 0.1),
        _result("c", 8, 3.0, 0.7, 0.2, **{"rankme/backbone": 6.0, REL_CHANGE: -0.01}),
        _result("d", 8, 4.0, 0.8, 0.3, **{"rankme/backbone": 1.0, REL_CHANGE: 0.1}),
    ]
    by_score = rank(grid, base, space, str(tmp_path), select_by="score")
    assert [r.trial for r in by_score] == ["a", "c", "d", "b"]  # completed first, then stopped
    b = by_score[-1]
    assert (b.status_text, b.checkpoint, b.selection_score, b.loss) == (
        "stopped at step 6",
        "/ck/b",
        2.5,
        0.7,
    )
    assert (b.rankme_backbone, b.rankme_projector, b.descending) == (9.0, 5.0, True)
    rows = rank(grid, base, space, str(tmp_path), select_by="rankme", plateau_tol=0.05)
    assert [(r.trial, r.rankme_backbone) for r in rows] == [
        ("c", 6.0),
        ("a", 3.0),
        ("d", 1.0),
        ("b", 9.0),
    ]
    assert math.isnan(rows[0].rankme_projector) and math.isnan(rows[1].rel_change)
    assert [(r.plateau, r.rising) for r in rows[:3]] == [
        (True, False),
        (False, False),
        (False, True),
    ]
    table = format_table(rows, space, "rankme")
    assert "ranked by rankme/backbone (higher is better)" in table
    assert "completed, loss rising" in table and "+10.0%" in table and "6.0/-" in table
    assert "stopped at step 6, still descending" in table
    line = format_convergence(rows, 50, 0.05)  # completed trials only; a has no rel_change
    assert "1 of 2 completed trials on a plateau" in line and "within 0.05 of the 50" in line
    assert "loss rising: d" in line and "still descending" not in line
    assert "convergence not measured" in format_convergence(rows[3:], 50, 0.05)
    table = list(csv.reader(io.StringIO(results_csv(rows, space))))
    assert table[1][table[0].index("rankme_projector")] == ""  # not measured: blank, not nan


def test_spearman_interval_on_constructed_trials():
    from lejepa_ray.tune.validation import spearman_interval

    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    rho, low, high = spearman_interval(x, [10 - v for v in x])
    assert rho == pytest.approx(-1.0) and low == pytest.approx(-1.0) and high == pytest.approx(-1)
    # A noisy but real relation: ρ inside its interval, which is wide for 8 trials and
    # excludes 0; the same seed gives the same interval.
    y = [0.1, 0.3, 0.2, 0.5, 0.4, 0.7, 0.6, 0.8]
    rho, low, high = spearman_interval(x, y)
    assert low <= rho <= high and 0 < low < 0.9 and high == pytest.approx(1.0)
    assert spearman_interval(x, y) == (rho, low, high)
    unrelated = spearman_interval(x, [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    assert unrelated[1] < 0 < unrelated[2]
    assert all(math.isnan(v) for v in spearman_interval(x[:2], y[:2]))
    assert all(math.isnan(v) for v in spearman_interval(x, [1.0] * 8))


def _row(i, score, loss, linear, knn, status=TrialStatus.COMPLETED, step=8, **extra):
    return TrialRow(
        rank=i,
        trial=f"t{i}",
        status=status,
        step=step,
        selection_score=score,
        loss=loss,
        params={"loss.lam": 0.01 * i},
        checkpoint=None,
        knn_top1=knn,
        linear_top1=linear,
        **extra,
    )


def test_validate_reports_every_metric_with_intervals_stopped_trials_included():
    from lejepa_ray.tune.validation import format_validation, validation_plots

    # Scores rank the accuracies exactly (lower score, higher accuracy); the raw loss ranks
    # them in the opposite order; RankMe (higher is better) agrees with the probes.
    rows = [
        _row(1, 1.0, 0.9, 0.9, 0.8, rankme_backbone=30.0, rankme_projector=8.0),
        _row(2, 2.0, 0.5, 0.7, 0.6, rankme_backbone=20.0, rankme_projector=7.0),
        _row(3, 3.0, 0.3, 0.5, 0.4, rankme_backbone=10.0, rankme_projector=6.0),
        _row(4, 4.0, 0.1, 0.1, 0.1, status=TrialStatus.STOPPED, step=2, rankme_backbone=5.0),
        _row(5, 0.1, 0.1, None, None, status=TrialStatus.FAILED, error="boom"),
    ]
    rows[1].descending = True
    v = validate(rows)
    json.dumps(v, allow_nan=False)  # strict JSON: what is undefined is null
    assert (v["trials"], v["completed"], v["stopped"]) == (4, 3, 1)
    assert v["still_descending"] == ["t2"]
    # validation.json's rows as before the enum: the status as its text, no error field.
    assert [r["status"] for r in v["rows"]] == ["completed"] * 3 + ["stopped at step 2"]
    assert "error" not in v["rows"][0]
    assert v["rho"]["selection_score~linear_top1"] == pytest.approx(-1.0)
    assert v["agreement"]["selection_score~linear_top1"] == pytest.approx(1.0)
    assert v["rho"]["selection_score~knn_top1"] == pytest.approx(-1.0)
    assert v["rho"]["loss~linear_top1"] == pytest.approx(1.0)
    assert v["agreement"]["loss~linear_top1"] == pytest.approx(-1.0)
    assert v["rho"]["rankme_backbone~linear_top1"] == pytest.approx(1.0)
    assert v["n"]["rankme_backbone~linear_top1"] == 4
    assert v["n"]["rankme_projector~linear_top1"] == 3  # the stopped trial has none
    low, high = v["interval95"]["rankme_backbone~linear_top1"]
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert v["label_free_pick"] == v["best_by_labels"] == {"trial": "t1", "linear_top1": 0.9}
    text = format_validation(v)
    assert "over 4 trials (3 completed, 1 stopped early)" in text
    assert "RankMe (backbone)" in text and "[+1.00, +1.00]" in text
    assert "1 of these trials were still descending" in text
    # Over the completed trials alone (t1-t3) too: what ASHA's shorter runs cannot inflate.
    assert v["completed_only"]["n"]["rankme_backbone~linear_top1"] == 3
    assert v["completed_only"]["agreement"]["selection_score~linear_top1"] == pytest.approx(1.0)
    assert "completed trials only (n=3), agreement with linear:" in text
    assert validate(rows, "rankme")["label_free_pick"]["trial"] == "t1"
    plots = validation_plots(rows, "test")
    assert set(plots) == {"selection_score", "loss", "rankme_backbone", "rankme_projector"}
    assert all(png.startswith(b"\x89PNG") and len(png) > 5000 for png in plots.values())
    for r in rows:  # λ not swept: one colour
        r.params = {}
    assert len(validation_plots(rows, "test")) == 4
    assert "at least 3" in validate(rows[:2])["note"]


def test_stopped_trials_are_probed_from_their_last_checkpoint(monkeypatch):
    import lejepa_ray.tune.validation as validation

    calls = []

    def probe(path, data, val_data=None):
        calls.append((path, data, val_data))
        return {"probe/knn_top1": 0.5, "probe/linear_top1": 0.6}

    monkeypatch.setattr(validation, "probe_trial", probe)
    rows = [
        _row(1, 1.0, 0.9, 0.9, 0.8),
        _row(2, 2.0, 0.5, None, None, status=TrialStatus.STOPPED, step=4),
        _row(3, 2.0, 0.5, None, None, status=TrialStatus.STOPPED, step=2),
    ]
    rows[1].checkpoint = "/runs/t2/checkpoint_00000004"
    lines = []
    validation.probe_stopped(rows, "digits:train", "digits:val", print_fn=lines.append)
    assert calls == [("/runs/t2/checkpoint_00000004", "digits:train", "digits:val")]
    assert (rows[1].knn_top1, rows[1].linear_top1) == (0.5, 0.6)
    assert rows[2].linear_top1 is None  # no checkpoint to probe
    assert lines == ["probing stopped trial t2 (1/1): /runs/t2/checkpoint_00000004"]


def test_a_stopped_trial_probed_during_training_is_not_probed_again(tmp_path, monkeypatch):
    import lejepa_ray.tune.validation as validation

    monkeypatch.setattr(validation, "probe_trial", lambda *a: pytest.fail("probed again"))
    probes = tmp_path / "t2" / "probes"
    probes.mkdir(parents=True)
    record = {"step": 4, "probe/knn_top1": 0.7, "probe/linear_top1": 0.8}
    (probes / "step_00000004.json").write_text(json.dumps(record))
    row = _row(2, 2.0, 0.5, None, None, status=TrialStatus.STOPPED, step=4)
    row.checkpoint = str(tmp_path / "t2" / "checkpoint_00000004")
    lines = []
    validation.probe_stopped([row], "digits:train", print_fn=lines.append)
    assert (row.knn_top1, row.linear_top1) == (0.7, 0.8)
    assert lines == [f"stopped trial t2: probed during training at {row.checkpoint}"]


def test_rerun_with_other_settings_is_refused_before_ray(tmp_path, monkeypatch):
    import lejepa_ray.launch.runtime

    space = _space(tmp_path, LAMBDA)
    (tmp_path / "runs" / "s").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "sweep.json").write_text(json.dumps({"samples": 99}))
    monkeypatch.setattr(
        lejepa_ray.launch.runtime, "connect", lambda **_: pytest.fail("Ray started")
    )
    with pytest.raises(ConfigError, match="was started with another"):
        run_sweep(
            SweepOptions(
                space=space,
                config=QUICKSTART,
                name="s",
                overrides=[f"storage_path={tmp_path / 'runs'}"],
            )
        )
