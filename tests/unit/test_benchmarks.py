"""benchmarks/quality.py, step_profile.py, sweep_curves.py and views.py: what they print and
measure."""

from __future__ import annotations

import json
import math
import sys

from benchmarks_helpers import BENCHMARKS, _load
from procs import TINY


def _run(seed: int, knn: float) -> dict:
    return {
        "seed": seed,
        "steps": 8,
        "wall_s": 30.0,
        "train_s": 20.0,
        "train_images_per_s": 25.6,
        "last_window_images_per_s": 40.0,
        "protocol": "train/val",
        "bank": 1437,
        "queries": 360,
        "trained_knn": knn,
        "trained_linear": 0.9,
        "init_knn": 0.8,
        "init_linear": 0.85,
        "raw_knn": 0.96,
        "raw_linear": 0.95,
    }


def test_quality_table_gives_the_spread_over_seeds():
    quality = _load("quality")
    runs = [_run(0, 0.90), _run(1, 0.92), _run(2, 0.94)]
    table = quality._table(runs).splitlines()
    assert "train/val: fitted on 1437, scored on 360 images" in table[0]
    trained = next(line for line in table if "trained backbone" in line)
    assert "0.920 ± 0.020" in trained and "0.900 ± 0.000" in trained
    assert sum(line.strip().startswith(("0 ", "1 ", "2 ")) for line in table) == 3
    summary = quality._summary(runs)
    assert summary["trained_knn_mean"] == 0.92 and summary["trained_knn_std"] == 0.02
    json.dumps(summary)


def test_step_profile_times_every_component(capsys):
    profile = _load("step_profile")
    assert (
        profile.main(
            [
                "--steps",
                "2",
                *TINY,
                "model.name=resnet10t",
                "scaling.batch_size=8",
                "scaling.num_workers=2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert set(result["ms"]) == {
        "views",
        "backbone fwd",
        "projector fwd",
        "loss fwd",
        "backward",
        "optimizer",
        "allreduce",
    }
    assert all(ms > 0 for ms in result["ms"].values())
    assert any(line.startswith("implied: ") for line in out)


def test_sweep_curves_reads_every_trial_and_draws_its_curves(tmp_path, capsys, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    sweep = tmp_path / "sweep"
    header = ["rank", "trial", "status", "step", "selection_score", "loss", "loss.lam"]
    header += ["knn_top1", "linear_top1", "rankme_backbone", "rankme_projector", "rel_change"]
    header += ["descending", "checkpoint"]
    lines = [",".join(header)]
    for i, lam in enumerate((0.01, 0.1)):
        writer = SummaryWriter(str(sweep / "runs" / f"t{i}" / "tensorboard"))
        for step in (10, 20, 30):
            writer.add_scalar("loss/smoothed", 1.0 / step + lam, step)
            writer.add_scalar("loss/prediction", 0.5 / step, step)
            writer.add_scalar("loss/sigreg", 2.0 / step, step)
        writer.add_scalar("rankme/backbone", 40.0 + i, 30)
        writer.close()
        lines.append(f"{i + 1},t{i},completed,30,1.0,0.5,{lam},0.9,0.95,{40 + i},9.0,-0.01,False,")
    (sweep / "results.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys, "argv", ["sweep_curves.py", str(sweep)])
    _load("sweep_curves").main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("t0  loss.lam=0.01  loss 0.0433") and "rankme 40/9.0" in out[0]
    assert out[1].startswith("t1  loss.lam=0.1  loss 0.1333") and "linear 0.95" in out[1]
    assert (sweep / "curves.png").stat().st_size > 5000 and out[-1].endswith("curves.png")


def test_views_benchmark_times_every_op_of_every_pipeline(capsys):
    out = _load("views").main(["--samples", "3", "--repeats", "1", "--width", "160"])
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-1]) == out
    ops = out["ops_ms"]
    assert {"decode", "crop_resize", "jitter", "blur", "copy"} <= set(ops["torchvision"])
    for kernels in ("pil", "fast"):
        assert {"decode", "draw", "crop_resize", "jitter", "flip_copy"} <= set(ops[kernels])
    assert {"decode", "draw", "crop_resize", "copy"} == set(ops["device"])
    assert all(s > 0 for s in out["speedup"].values())
    assert any(line.startswith("| **total**") for line in printed)
    # The fast kernels are within a few levels of the reference on real views.
    assert 0 < out["fast_vs_pil_levels"]["mean"] < 2


def test_scale_plan_memory_is_what_docs_scaling_gives():
    from lejepa_ray.config import load_config

    plan = _load("scale_plan")
    recipe = BENCHMARKS.parent / "jobs" / "configs" / "imagenet1k_vit_gigantic.yaml"
    giant = plan.Geometry.of(load_config(recipe))
    assert (giant.tokens, giant.depth, giant.d) == (914, 48, 1664)

    def gb(workers: int, batch: int) -> list[float]:
        m = plan.memory_gb(giant, workers, batch, fsdp=True)
        keys = ("states", "activations_checkpointed", "total_checkpointed")
        return [round(m[k], 2) for k in keys]

    # docs/scaling.md, "Elastic range": 32 GPUs of 16 images, 8 of 64.
    assert gb(32, 16) == [0.93, 3.25, 4.49]
    assert gb(8, 64) == [3.70, 13.01, 17.02]
    # One GPU (the GPU check): AdamW's step, not the activations, sets the peak.
    assert round(plan.memory_gb(giant, 1, 16, fsdp=True)["total_checkpointed"], 1) == 37.3


def test_asha_replay_stops_by_each_metric_as_tunes_asha_would():
    replay = _load("asha_replay")
    # Four trials in the order they ran; the score (lower is better) and RankMe (higher is
    # better) disagree about d, the best by score and the worst by RankMe.
    score = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.5}
    rankme = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.5}
    curves = {
        t: {
            "selection_score/smoothed": [(s, score[t]) for s in (2, 4, 6, 8)],
            "rankme/backbone": [(s, rankme[t]) for s in (2, 4, 6, 8)],
        }
        for t in "abcd"
    }
    rows = {
        t: {
            "selection_score": str(score[t]),
            "rankme_backbone": str(rankme[t]),
            "knn_top1": str(0.9 + 0.01 * i),
            "linear_top1": "",
        }
        for i, t in enumerate("abcd")
    }
    by_score = replay.stops(curves, "selection_score/smoothed", "min", 2, 2, 8)
    # a runs alone; b and c are worse than the median at the first rung; d is better.
    assert by_score == {"a": None, "b": 2, "c": 2, "d": None}
    assert replay.stops(curves, "rankme/backbone", "max", 2, 2, 8) == {
        "a": None,
        "b": None,
        "c": None,
        "d": 2,
    }
    lines = {line["policy"]: line for line in replay.replay(curves, rows, 2, 2)}
    fifo = lines["FIFO, select by rankme"]
    assert (fifo["trial_steps"], fifo["finished"], fifo["winner"]) == (32, 4, "c")
    old = lines["ASHA by score, select by rankme"]
    assert (old["trial_steps"], old["winner"], old["winner_knn"]) == (20, "a", 0.9)
    new = lines["ASHA by rankme, select by rankme"]
    assert (new["trial_steps"], new["of_fifo"], new["winner"]) == (26, 26 / 32, "c")
    assert math.isnan(new["winner_linear"])
    assert lines["ASHA by score, select by score"]["winner"] == "d"
    timed = {
        t: {**c, "time/rankme_s": [(s, 0.3) for s in (2, 4, 6, 8)], "time/step_s": [(2, 0.5)]}
        for t, c in curves.items()
    }
    cost = replay.rankme_cost(timed)
    assert cost["report_every_steps"] == 2 and cost["rankme_share_of_step"] == 0.3 / 2 / 0.5
    assert replay.rankme_cost(curves) == {}


def test_leave_one_out_knn_is_the_kNN_probe_with_each_image_once_the_query():
    import torch

    from lejepa_ray.evaluation.probe import knn_accuracy, standardize

    loo = _load("knn_loo")
    # Three overlapping classes in 5-D, so that some images are misclassified.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 5, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, 5)
    everyone = torch.zeros(60, dtype=torch.bool)
    x = standardize(features, everyone)
    for k in (1, 20, 500):
        # The probe itself, 60 times: image i the only query, the 59 others the bank.
        wrong = [1 - knn_accuracy(x, labels, torch.arange(60) == i, k) for i in range(60)]
        assert loo.loo_errors(features, labels, k=k) == round(sum(wrong))
    assert 0 < loo.loo_errors(features, labels) < 30
    # An image is never its own neighbour: with k = 1 it would always be right.
    assert loo.loo_errors(features, labels, k=1) > 0
