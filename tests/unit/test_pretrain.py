"""The pretraining driver without Ray: its checks before Ray starts, and the errors it unwraps.

Multi-process, Ray and slow tests: ``tests/integration/test_pretrain.py``."""

from __future__ import annotations

import pytest
import torch
from pretrain_helpers import _quickstart

from lejepa_ray import runs
from lejepa_ray.config import load_config, to_yaml
from lejepa_ray.launch.driver import run
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train import checkpoint, checkpoint_read


def test_a_workers_checkpoint_or_data_error_reaches_the_user_unwrapped():
    from ray.train.v2.api.exceptions import WorkerGroupError

    from lejepa_ray.launch.torch_trainer import _user_error

    bad = checkpoint.CheckpointError("x/__1_0.distcp is missing: ...")
    wrapped = WorkerGroupError("Training failed", {0: RuntimeError("peer gone"), 1: bad})
    assert _user_error(wrapped) is bad
    other = WorkerGroupError("Training failed", {0: RuntimeError("segfault")})
    assert _user_error(other) is other


def test_resuming_with_another_model_fails_before_ray_starts(tmp_path, monkeypatch):
    from lejepa_ray.launch import runtime
    from lejepa_ray.launch.preflight import check_resumable

    cfg = _quickstart(tmp_path, "other", "probe.knn=false")
    trainer_cfg = _quickstart(tmp_path, "other", "model.name=resnet34")
    from lejepa_ray.train.trainer import Trainer

    trainer = Trainer(trainer_cfg, resolve_backbone(trainer_cfg), torch.device("cpu"))
    ckpt = tmp_path / "other" / "checkpoint_00000005"
    ckpt.mkdir(parents=True)
    checkpoint.save(
        ckpt, trainer.tensors, checkpoint.TrainState(step=5, model="resnet34"), to_yaml(trainer_cfg)
    )
    check_resumable(str(ckpt), trainer_cfg, resolve_backbone(trainer_cfg))  # same model: fine
    monkeypatch.setattr(runtime, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(
        runs,
        "latest_checkpoint",
        lambda run_dir: runs.Latest(str(ckpt), {"step": 5}, checkpoint_read.Opened(ckpt)),
    )
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"cannot load a resnet34 checkpoint .* into resnet18: .*"
        r"another name= or storage_path=",
    ):
        run(cfg)


def test_ray_train_gets_an_elastic_range_with_the_custom_resources():
    from lejepa_ray.launch.torch_trainer import _ray_scaling

    elastic = _ray_scaling(
        load_config(
            None,
            [
                "scaling.num_workers=[2,4]",
                "scaling.batch_size=3",
                "scaling.resources={spot_slot: 1}",
                "scaling.resize_check_s=5",
            ],
        )
    )
    assert elastic.num_workers == (2, 4) and (elastic.min_workers, elastic.max_workers) == (2, 4)
    assert elastic.resources_per_worker == {"CPU": 1.0, "spot_slot": 1.0}
    assert elastic.elastic_resize_monitor_interval_s == 5
    fixed = _ray_scaling(load_config(None, ["scaling.num_workers=[3,3]"]))
    assert fixed.num_workers == 3
