"""Tracking without Ray: metrics.jsonl, MLflow (a SQLite store, no server) and W&B (offline),
each continued by a resumed attempt (``train.tracking``), and the trackers' own checks and
parameters (``train.trackers``). The run on Ray, against a real MLflow server, is
``tests/integration/test_tracking.py``."""

from __future__ import annotations

import json

import pytest
from tracking_helpers import wandb_run

from lejepa_ray.config import LoggingConfig, WandbConfig
from lejepa_ray.errors import ConfigError
from lejepa_ray.train import trackers, tracking


def _run(tmp_path) -> trackers.RunInfo:
    config = {"optim": {"lr": 0.001, "steps": 3}, "model": {"name": "resnet10t"}}
    return trackers.RunInfo(str(tmp_path / "run"), "run", config, "optim:\n  lr: 0.001\n")


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_attempt_continues_the_same_runs_and_drops_the_failed_attempts_lines(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store keeps artifacts in ./mlruns
    cfg = LoggingConfig(
        mlflow=f"sqlite:///{tmp_path}/mlflow.db",
        wandb=WandbConfig(project="p", mode="offline"),
        group="sweep-1",
    )
    run = _run(tmp_path)
    first = tracking.Tracking(cfg, run, ids={})
    ids = first.ids
    assert set(ids) == {"mlflow", "wandb"}
    for step in (1, 2):  # the checkpoint is at step 1; step 2 is lost with the attempt
        first.log(step, {"loss": 1.0 / step})
    first.close(failed=True)
    assert tracking.read_ids(run.run_dir) == ids

    second = tracking.Tracking(cfg, run, ids=ids, resumed_step=1)
    assert second.ids == ids  # the same tracking runs, not new ones
    for step in (2, 3):
        second.log(step, {"loss": 0.1 * step})
    second.close()

    # metrics.jsonl: each step once, as TensorBoard keeps them.
    assert _steps(tmp_path / "run" / "metrics.jsonl") == [1, 2, 3]

    from mlflow import MlflowClient

    client = MlflowClient(cfg.mlflow)
    experiment = client.get_experiment_by_name("sweep-1")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == ids["mlflow"]
    assert found.info.status == "FINISHED"
    assert found.data.params["optim.lr"] == "0.001"
    history = client.get_metric_history(ids["mlflow"], "loss")
    assert [m.step for m in history] == [1, 2, 2, 3]  # every point it was sent

    (wandb_id, logged), *others = wandb_run(tmp_path / "run" / "wandb").items()
    assert not others and wandb_id == ids["wandb"]
    assert logged["group"] == "sweep-1" and logged["name"] == "run"
    assert logged["config"]["optim"] == {"lr": 0.001, "steps": 3}
    rows = [(r["step"], r["loss"]) for r in logged["history"]]
    assert rows == [(1, 1.0), (2, 0.5), (2, pytest.approx(0.2)), (3, pytest.approx(0.3))]


def test_metrics_jsonl_is_written_without_any_tracker(tmp_path):
    run = _run(tmp_path)
    tracked = tracking.Tracking(LoggingConfig(), run, ids={})
    tracked.log(10, {"loss": 0.5})
    tracked.close()
    assert tracked.ids == {}
    assert not (tmp_path / "run" / tracking.IDS_FILE).exists()
    (line,) = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["loss"] == 0.5 and json.loads(line)["step"] == 10


def test_keep_until_drops_later_steps_and_a_line_cut_short():
    text = '{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st'
    assert tracking.keep_until(text, 2) == '{"step": 1}\n{"step": 2}\n'


def test_flatten_gives_mlflow_parameters():
    assert trackers.flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {
        "a.b": "1",
        "a.c": "{}",
        "d": "[1, 2]",
    }


def test_a_tracker_that_is_not_installed_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"logging.wandb.project is set, but wandb is not"):
        trackers.check(LoggingConfig(wandb=WandbConfig(project="p")))
    trackers.check(LoggingConfig())  # nothing on: nothing needed


def test_wandb_mode_is_checked():
    with pytest.raises(ConfigError, match=r"logging\.wandb\.mode"):
        WandbConfig(project="p", mode="cloud")


def test_a_run_id_the_server_does_not_have_starts_a_new_run(tmp_path, caplog):
    cfg = LoggingConfig(mlflow=f"sqlite:///{tmp_path}/mlflow.db")
    tracked = tracking.Tracking(cfg, _run(tmp_path), ids={"mlflow": "0" * 32})
    assert tracked.ids["mlflow"] != "0" * 32
    tracked.close()
    assert "is not at" in caplog.text
    # its artifacts (config.yaml) beside the database, not in the working directory
    assert list((tmp_path / "mlartifacts").rglob("config.yaml"))


def test_an_unreachable_mlflow_server_or_a_missing_wandb_key_stop_the_run_first(
    tmp_path, monkeypatch
):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match="the tracking server did not answer"):
        trackers.check(LoggingConfig(mlflow=f"http://127.0.0.1:{port}"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ConfigError, match="needs a W&B API key"):
        trackers.check(LoggingConfig(wandb=WandbConfig(project="p")))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    trackers.check(LoggingConfig(wandb=WandbConfig(project="p")))


def test_relative_local_stores_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert LoggingConfig(mlflow="sqlite:///m.db").mlflow == f"sqlite:///{tmp_path}/m.db"
    assert LoggingConfig(mlflow="mlruns").mlflow == str(tmp_path / "mlruns")
    for uri in ("http://mlflow:5000", "databricks", f"sqlite:///{tmp_path}/x.db"):
        assert LoggingConfig(mlflow=uri).mlflow == uri
