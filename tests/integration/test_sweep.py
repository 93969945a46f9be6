"""Sweeps: option and space checks, ranking, results, Spearman validation; a real ASHA sweep
with probes, interrupted with Ctrl+C and resumed, through the command line.

The one-process tests are in ``tests/unit/test_sweep.py``."""

from __future__ import annotations

import csv
import json
import math
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from procs import TINY, clean_env, console_script, flags, tail
from sweep_helpers import _space
from tracking_helpers import wandb_run

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "platform" / "lejepa_ray" / "configs" / "quickstart.yaml")

LAMBDA = "loss.lam:\n  loguniform: [0.01, 0.3]\n"


@pytest.mark.slow
def test_sweep_interrupted_with_ctrl_c_resumes_ranks_validates_and_exports(tmp_path):
    """The command a user runs, twice: a 3-trial ASHA sweep with probes gets Ctrl+C (SIGINT)
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
        "3",
        # The first rung at a checkpoint step: every trial has a checkpoint to probe, so the
        # validation has its 3 trials however ASHA decides.
        "--grace_steps",
        "4",
        "--validate_with_labels",
        "digits",
        # Each trial one W&B run (offline), filed under the sweep's name.
        *flags([*TINY, f"storage_path={tmp_path}", "logging.wandb.project=sweeps"]),
        *flags(["logging.wandb.mode=offline"]),
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
    assert "interrupted with 2 unfinished trial(s)" in first_log.read_text(), tail(first_log)
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
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert all(re.fullmatch("completed|stopped at step 4", r["status"]) for r in rows), rows
    assert next(r for r in rows if r["trial"] in finished)["status"] == "completed"
    done = [r for r in rows if r["status"] == "completed"]
    assert rows[0] in done and rows[0]["checkpoint"]
    ranks = [float(r["rankme_backbone"]) for r in done]  # the default --select-by rankme
    assert ranks == sorted(ranks, reverse=True)
    for r in rows:  # every report carried the score; a stopped trial ends on the rung, 4
        assert math.isfinite(float(r["selection_score"])) and r["step"] in ("4", "8"), r
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
    # ASHA stops by what selects (RankMe, the default): every report Tune got carries it.
    for p in sweep.glob("_trial_*/result.json"):
        reports = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        assert reports and all("rankme/backbone" in r and r["time/rankme_s"] > 0 for r in reports)
    assert (sweep / "plot.png").stat().st_size > 5000
    winner = json.loads((sweep / "winner" / "config.json").read_text())
    assert winner["architecture"] == "resnet10t" and winner["lejepa"]["step"] == 8
    # Early-stopped trials (their checkpoint of step 4) are probed too, by the driver.
    probed = [r for r in rows if r["checkpoint"]]
    assert len(probed) == 3
    assert all(0 <= float(r["linear_top1"]) <= 1 and 0 <= float(r["knn_top1"]) <= 1 for r in probed)
    for r in probed:  # RankMe of the last checkpoint: at most the projector's 64 dimensions
        assert float(r["rankme_backbone"]) >= 1 and 1 <= float(r["rankme_projector"]) <= 64
    validation = json.loads((sweep / "validation.json").read_text())
    assert validation["trials"] == len(probed) and validation["completed"] == len(done)
    low, high = validation["interval95"]["rankme_backbone~linear_top1"]
    assert (low is None and high is None) or -1 <= low <= high <= 1
    for metric in ("selection_score", "loss", "rankme_backbone", "rankme_projector"):
        assert (sweep / f"validation_{metric}.png").stat().st_size > 5000, metric
    assert "label-free metrics against probe accuracy over" in second.stdout
    assert "convergence:" in second.stdout

    # Tracking: one W&B run per completed trial, grouped by the sweep. (Tune kills the
    # processes of a trial ASHA stops, and with them W&B's service before it has written its
    # buffered records: docs/sweeps.md.)
    for r in done:
        runs = wandb_run(sweep / "runs" / r["trial"] / "wandb", finished=False)
        assert [run["group"] for run in runs.values()] == ["asha"], r["trial"]

    # The quiet console, into a file or a pipe: a line per trial start and end, the tables;
    # no Tune status boxes, no (pid=...) prefixes, no colour codes.
    for console in (first_log.read_text(), second.stdout):
        assert "\x1b[" not in console and "pid=" not in console
        noise = "[╭╰├│]|Trial status|Configuration for experiment|View detailed|WARNING"
        assert not re.search(noise, console), console
    assert re.search(r"^trial 1/3 \S+ started: loss.lam=", first_log.read_text(), re.M)
    ends = re.findall(
        r"^trial [123]/3 \S+ (finished at step 8/8|stopped early by ASHA at step 4/8)",
        second.stdout,
        re.M,
    )
    assert len(ends) == 2, second.stdout  # the two trials the resumed sweep ran
    assert len(second.stdout.splitlines()) < 60, second.stdout
