"""Sweeps: option and space checks, ranking, results, Spearman validation; a real ASHA sweep
with probes, interrupted with Ctrl+C and resumed, through the command line."""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import TINY, clean_env, console_script, tail

from lejepa_ray.config import ConfigError
from lejepa_ray.space import Dimension
from lejepa_ray.sweep import (
    METRIC,
    SweepOptions,
    TrialRow,
    check,
    plot_png,
    rank,
    results_csv,
    run_sweep,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "jobs" / "configs" / "quickstart.yaml")


def _space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


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
        ({"scheduler": "hyperband"}, "--scheduler must be one of asha, fifo"),
        ({"search": "bayes"}, "--search must be one of random, optuna"),
        ({"samples": 0}, "--samples must be >= 1"),
        ({"reduction_factor": 1}, "--reduction-factor must be >= 2"),
    ],
)
def test_options_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SweepOptions(space="x.yaml", **kwargs)


def test_searchers_seed_and_limit_concurrency(tmp_path):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from lejepa_ray.sweep import _searcher

    random = _searcher(SweepOptions(space="x", max_concurrent_trials=3, seed=7))
    assert isinstance(random, BasicVariantGenerator) and random.max_concurrent == 3
    optuna = _searcher(SweepOptions(space="x", search="optuna", max_concurrent_trials=2))
    assert isinstance(optuna, ConcurrencyLimiter) and optuna.max_concurrent == 2
    assert isinstance(optuna.searcher, OptunaSearch)


def test_asha_rungs_follow_the_steps_a_trial_runs(tmp_path):
    from lejepa_ray.config import load_config
    from lejepa_ray.sweep import _scheduler

    base = load_config(QUICKSTART)  # 150 steps; the space's trials run 40
    space = [Dimension("optim.steps", "fixed", (40,))]
    asha = _scheduler(SweepOptions(space="x"), base, space)
    assert (asha._max_t, asha._brackets[0]._rungs[-1][0]) == (40, 10)
    ranged = [Dimension("optim.steps", "randint", (20, 81))]
    assert _scheduler(SweepOptions(space="x", grace_steps=5), base, ranged)._max_t == 80


def _result(trial, step, score, loss, lam, error=None, probes=None):
    metrics = {
        "trial_id": trial,
        "step": step,
        METRIC: score,
        "loss/smoothed": loss,
        **(probes or {}),
    }
    return SimpleNamespace(
        metrics=metrics, config={"loss.lam": lam}, error=error, path=f"/x/{trial}"
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
    rows = rank(grid, base, space, str(tmp_path))
    assert [(r.rank, r.trial, r.status) for r in rows] == [
        (1, "c", "completed"),
        (2, "a", "completed"),
        (3, "b", "stopped at step 2"),
        (4, "d", "error: bad λ"),
    ]
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
        "checkpoint",
    ]
    assert table[1][:7] == ["1", "c", "completed", "8", "2.0", "0.8", "0.02"]
    png = plot_png(rows, space, "test")
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def _row(i, score, loss, linear, knn, status="completed"):
    return TrialRow(i, f"t{i}", status, 8, score, loss, {}, None, knn, linear)


def test_validate_reports_spearman_of_score_and_loss_against_accuracy():
    # Scores rank the accuracies exactly (lower score, higher accuracy); the raw loss
    # ranks them in the opposite order.
    rows = [
        _row(1, 1.0, 0.9, 0.9, 0.8),
        _row(2, 2.0, 0.5, 0.7, 0.6),
        _row(3, 3.0, 0.3, 0.5, 0.4),
        _row(4, 0.5, 0.1, 0.1, 0.1, status="stopped at step 2"),
    ]
    v = validate(rows)
    assert v["trials"] == 3  # the stopped trial is left out
    assert v["rho"]["selection_score~linear_top1"] == pytest.approx(-1.0)
    assert v["rho"]["selection_score~knn_top1"] == pytest.approx(-1.0)
    assert v["rho"]["loss~linear_top1"] == pytest.approx(1.0)
    assert v["label_free_pick"] == v["best_by_labels"] == {"trial": "t1", "linear_top1": 0.9}
    assert "at least 3" in validate(rows[:2])["note"]


def test_rerun_with_other_settings_is_refused_before_ray(tmp_path, monkeypatch):
    import lejepa_ray.runtime

    space = _space(tmp_path, LAMBDA)
    (tmp_path / "runs" / "s").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "sweep.json").write_text(json.dumps({"samples": 99}))
    monkeypatch.setattr(lejepa_ray.runtime, "connect", lambda **_: pytest.fail("Ray started"))
    with pytest.raises(ConfigError, match="was started with another"):
        run_sweep(
            SweepOptions(
                space=space,
                config=QUICKSTART,
                name="s",
                overrides=[f"storage_path={tmp_path / 'runs'}"],
            )
        )


@pytest.mark.slow
def test_sweep_interrupted_with_ctrl_c_resumes_ranks_validates_and_exports(tmp_path):
    """The command a user runs, twice: a 4-trial ASHA sweep with probes gets Ctrl+C (SIGINT)
    once its first trial has finished, then the same command resumes it. Each run has its own
    embedded Ray instance, as at a shell (~75 s a trial on 2 cores, mostly Ray start-up)."""
    space = _space(tmp_path, LAMBDA + "loss.num_slices:\n  choice: [64, 256]\n")
    cmd = [
        console_script(),
        "sweep",
        "--space",
        space,
        "--config",
        QUICKSTART,
        "--name",
        "asha",
        "--samples",
        "4",
        "--grace-steps",
        "2",
        "--validate-with-labels",
        *TINY,
        f"storage_path={tmp_path}",
    ]
    sweep = tmp_path / "asha"

    def finished_trials() -> dict[str, float]:
        """Trials with their final probe reported -> mtime of their last checkpoint's state.
        Trial dirs are _trial_<id>_<index>_...; the trial's run is runs/<id>."""
        out = {}
        for p in sweep.glob("_trial_*/result.json"):
            if '"probe/linear_top1"' in p.read_text():
                trial = "_".join(p.parent.name.split("_")[2:4])
                state = sweep / "runs" / trial / "checkpoint_00000008" / "state.json"
                out[trial] = state.stat().st_mtime
        return out

    first_log = tmp_path / "first.log"
    with first_log.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        deadline = time.monotonic() + 600
        while not finished_trials() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, f"the sweep ended before Ctrl+C:\n{tail(first_log)}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 130, tail(first_log)
    assert "interrupted with 3 unfinished trial(s)" in first_log.read_text(), tail(first_log)
    finished = finished_trials()
    assert len(finished) == 1

    second = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=800)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    assert "resuming sweep asha" in second.stdout
    assert "sweep resumed and finished" in second.stdout
    for trial, mtime in finished.items():  # the finished trial was kept, not trained again
        assert (
            sweep / "runs" / trial / "checkpoint_00000008" / "state.json"
        ).stat().st_mtime == mtime

    with (sweep / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert all(not r["status"].startswith("error") for r in rows), [r["status"] for r in rows]
    assert next(r for r in rows if r["trial"] in finished)["status"] == "completed"
    done = [r for r in rows if r["status"] == "completed"]
    assert rows[0] in done and rows[0]["checkpoint"]
    scores = [float(r["selection_score"]) for r in done]
    assert scores == sorted(scores)
    for r in rows:  # every report carried the score; a stopped trial ends on a rung (2 or 4)
        assert math.isfinite(float(r["selection_score"])) and r["step"] in ("2", "4", "8"), r
    assert list(rows[0])[:10] == [
        "rank",
        "trial",
        "status",
        "step",
        "selection_score",
        "loss",
        "loss.lam",
        "loss.num_slices",
        "knn_top1",
        "linear_top1",
    ]
    assert (sweep / "plot.png").stat().st_size > 5000
    winner = json.loads((sweep / "winner" / "config.json").read_text())
    assert winner["architecture"] == "resnet10t" and winner["lejepa"]["step"] == 8
    assert all(0 <= float(r["linear_top1"]) <= 1 and 0 <= float(r["knn_top1"]) <= 1 for r in done)
    assert json.loads((sweep / "validation.json").read_text())["trials"] == len(done)
    assert "label-free selection over" in second.stdout
