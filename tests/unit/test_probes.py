"""launch/probes.py: the probes of checkpoints during training, as Ray Train runs them (here
called directly on a checkpoint, without Ray), their records, and the config rules."""

from __future__ import annotations

import json

import pytest
from export_helpers import _trained_checkpoint
from PIL import Image
from ray.train import Checkpoint

from lejepa_ray.cli.handlers import during_table
from lejepa_ray.config import check_run, load_config
from lejepa_ray.errors import ConfigError, SourceError
from lejepa_ray.launch import probes
from lejepa_ray.model.encoder import resolve_backbone


def _probe(tmp_path, *overrides: str) -> tuple[probes.CheckpointProbe, Checkpoint]:
    path, _ = _trained_checkpoint(tmp_path, "test_resnet")
    cfg = load_config(
        None,
        [
            "model.name=test_resnet",
            "model.projector_hidden=64",
            "model.projector_dim=16",
            "data.views.global_size=32",
            "data.views.local_size=16",
            "data.views.local_views=2",
            "scaling.num_workers=1",
            "scaling.batch_size=8",
            "data.source=digits",
            "data.split=train",
            "probe.max_samples=300",
            *overrides,
        ],
    )
    run_dir = str(path.parent)
    return probes.CheckpointProbe(cfg, resolve_backbone(cfg), run_dir), Checkpoint(str(path))


def test_a_checkpoint_is_probed_and_the_figures_kept_by_step(tmp_path):
    probe, ckpt = _probe(tmp_path)
    out = probe(ckpt, step=2)
    assert 0 <= out["probe/knn_top1"] <= 1 and 0 <= out["probe/linear_top1"] <= 1
    assert out["probe/step"] == 2 and out["probe/seconds"] > 0
    run = tmp_path / "run"
    record = json.loads((run / "probes" / "step_00000002.json").read_text())
    assert record["probe/knn_top1"] == out["probe/knn_top1"]
    assert probes.read_probes(str(run)) == {2: record}
    assert probes.probe_of(str(run / "checkpoint_00000002")) == record
    assert probes.probe_of(str(run / "checkpoint_00000004")) is None
    assert probes.probe_of(str(run / "checkpoint_00000002_1")) == record  # saved again
    (run / "probes" / "step_00000006.json").write_text('{"step": 6, "probe/kn')  # cut short
    assert probes.read_probes(str(run)) == {2: record}
    assert list((run / "tensorboard" / "probes").glob("events.out.tfevents.*"))
    assert "step      2  " in during_table({2: record})


def test_a_failing_probe_is_reported_and_does_not_raise(tmp_path):
    empty = tmp_path / "one_class" / "cat"  # a folder of one class: nothing to probe with
    empty.mkdir(parents=True)
    probe, ckpt = _probe(tmp_path, f"probe.data={empty.parent}")
    out = probe(ckpt, step=4)
    assert out == {"probe/failed": 1.0, "probe/step": 4.0}
    (record,) = probes.read_probes(str(tmp_path / "run")).values()
    assert record["probe/failed"] == 1.0 and record["error"].startswith(("ConfigError", "Source"))
    assert "step      4  failed: " in during_table({4: record})
    assert probes.probe_of(str(tmp_path / "run" / "checkpoint_00000004")) is None  # failed


def test_only_every_n_th_checkpoint_is_sent_for_probing():
    cfg = load_config(None, ["probe.every_steps=100", "checkpoint.every_steps=50"])
    assert probes.report_kwargs(cfg, 50) == {}
    (task,) = probes.report_kwargs(cfg, 200).values()
    assert task.fn_kwargs == {"step": 200} and task.timeout_s is None
    bounded = load_config(None, ["probe.every_steps=100", "probe.timeout_s=30"])
    assert probes.report_kwargs(bounded, 100)["validation"].timeout_s == 30
    assert probes.report_kwargs(load_config(None, []), 500) == {}


def test_the_probe_task_reserves_probe_resources():
    cfg = load_config(
        None, ["probe.every_steps=500", "probe.resources={CPU: 2, GPU: 1, probe_slot: 1}"]
    )
    config = probes.validation_config(cfg, resolve_backbone(cfg), "/tmp/run")
    assert config.ray_remote_kwargs == {
        "num_cpus": 2,
        "num_gpus": 1,
        "resources": {"probe_slot": 1},
    }
    assert probes.validation_config(load_config(None, []), resolve_backbone(cfg), "/x") is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["probe.every_steps=300"], "not a multiple of checkpoint.every_steps=500"),
        (["probe.val_data=digits:val"], "unset unless probe.data is set"),
        (["probe.every_steps=-1"], "probe.every_steps=-1"),
    ],
)
def test_probe_configs_that_cannot_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_run(load_config(None, overrides))


def test_probe_data_is_checked_before_ray_starts(tmp_path):
    missing = load_config(None, ["probe.every_steps=500", f"probe.data={tmp_path}/nope"])
    with pytest.raises(SourceError, match=r"^probe\.data='.*/nope' is neither a source"):
        probes.check_data(missing)
    flat = tmp_path / "flat"  # images without class subfolders: no labels
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    unlabelled = load_config(
        None, ["probe.every_steps=500", "data.source=folder", f"data.path={flat}"]
    )
    with pytest.raises(ConfigError, match=r"set probe\.data to labelled images"):
        probes.check_data(unlabelled)
    probes.check_data(load_config(None, ["probe.every_steps=500", "data.source=digits"]))
