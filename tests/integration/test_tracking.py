"""Tracking on Ray: a pretraining run logged to a real MLflow server (SQLite backend, on the
loopback) and to W&B offline, then resumed: both continue the same tracking run, and the
probes join it. The trackers alone, without Ray, are ``tests/unit/test_tracking.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pretrain_helpers import _quickstart
from tracking_helpers import mlflow_server, wandb_run

from lejepa_ray.launch.driver import run
from lejepa_ray.train import tracking


@pytest.mark.slow
def test_a_resumed_run_appends_to_the_same_mlflow_and_wandb_runs(ray_cluster, tmp_path):
    with mlflow_server(tmp_path) as uri:
        overrides = [
            "optim.warmup_steps=1",
            "logging.every_steps=2",
            "checkpoint.every_steps=4",
            f"logging.mlflow={uri}",
            "logging.wandb.project=lejepa-test",
            "logging.wandb.mode=offline",
            "logging.group=tracked-sweep",
            "probe.max_samples=300",
            "probe.linear=false",
        ]
        first = run(_quickstart(tmp_path, "tracked", "optim.steps=4", *overrides))
        second = run(_quickstart(tmp_path, "tracked", "optim.steps=6", *overrides))
        assert second.resumed_from == 4

        run_dir = Path(second.run_dir)
        ids = tracking.read_ids(str(run_dir))
        state = json.loads((Path(second.checkpoint) / "state.json").read_text())
        assert state["tracking"] == ids  # what a resume reads
        assert set(ids) == {"mlflow", "wandb"}

        # metrics.jsonl: every logged step once, then each run's probes at its final step.
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines if "loss" in x] == [2, 4, 6]
        probed = [x["step"] for x in lines if "probe/final/knn_top1" in x]
        assert probed == [4, 6]  # the first run's probe is of the checkpoint resumed from
        assert first.probe is not None

        from mlflow import MlflowClient

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tracked-sweep")
        (logged,) = client.search_runs([experiment.experiment_id])  # one run for both
        assert logged.info.run_id == ids["mlflow"]
        assert logged.info.run_name == "tracked"
        assert logged.info.status == "FINISHED"
        assert logged.data.params["model.name"] == "resnet18"
        assert logged.data.params["optim.steps"] == "4"  # the config the run started with
        losses = client.get_metric_history(ids["mlflow"], "loss")
        assert [m.step for m in losses] == [2, 4, 6]
        knn = client.get_metric_history(ids["mlflow"], "probe/final/knn_top1")
        assert [m.step for m in knn] == [4, 6]
        assert knn[-1].value == pytest.approx(second.probe.trained.knn_top1)
        assert "probe/final/raw/knn_top1" in logged.data.metrics

    runs = wandb_run(run_dir / "wandb")
    assert list(runs) == [ids["wandb"]]
    (wandb,) = runs.values()
    assert wandb["group"] == "tracked-sweep" and wandb["name"] == "tracked"
    assert wandb["config"]["model"]["name"] == "resnet18"
    assert [r["step"] for r in wandb["history"] if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in wandb["history"] if "probe/final/knn_top1" in r] == [4, 6]
