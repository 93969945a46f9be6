"""Run configuration: files, overrides, validation before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from lejepa_ray.config import (
    ConfigError,
    PretrainConfig,
    check_model_name,
    check_run,
    load_config,
    scaled_lr,
    to_yaml,
)
from lejepa_ray.data.batch_split import batch_share, batch_split, drawn_per_worker

CONFIGS = Path(__file__).parents[2] / "jobs" / "configs"
# The default of `lejepa-ray pretrain`, package data (tests/integration/test_packaging.py checks
# the wheel).
QUICKSTART = Path(__file__).parents[2] / "platform" / "lejepa_ray" / "configs" / "quickstart.yaml"


def test_defaults_and_overrides():
    cfg = load_config(
        None,
        [
            "model.name=vit_small_patch16_224",
            "loss.lam=0.02",
            "data.views.local_views=4",
            "optim.betas=[0.9,0.95]",
        ],
    )
    assert isinstance(cfg, PretrainConfig)
    assert cfg.model.name == "vit_small_patch16_224"
    assert cfg.loss.lam == 0.02 and cfg.data.views.local_views == 4
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.scaling.strategy == "ddp"


@pytest.mark.parametrize("name", ["quickstart", "imagenet1k_vit_large", "imagenet1k_vit_gigantic"])
def test_shipped_configs_validate(name):
    # The recipes' data.path is a placeholder bucket (refused by check_run, as it should be):
    # a user's own path stands in for it.
    own = [] if name == "quickstart" else ["data.path=s3://my-bucket/in1k-train"]
    cfg = load_config(QUICKSTART if name == "quickstart" else CONFIGS / f"{name}.yaml", own)
    check_run(cfg)
    # The merged config round-trips through the YAML written into the run directory.
    assert load_config_text(to_yaml(cfg), tmp=CONFIGS.parent) == cfg


def load_config_text(text: str, tmp: Path) -> PretrainConfig:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        Path(f.name).unlink()


def test_the_imagenette_recipe_is_minimal_mds():
    # github.com/rbalestr-lab/lejepa MINIMAL.md: `+lamb=0.02 +V=4 +proj_dim=16 +lr=2e-3 +bs=256
    # +epochs=800`, ViT-S/8 at 128 px, 9,469 // 256 = 36 steps an epoch, cosine to 1e-3.
    cfg = load_config(CONFIGS / "imagenette_vit_small.yaml")
    m, v, o = cfg.model, cfg.data.views, cfg.optim
    assert m.name == "vit_small_patch8_224" and m.model_args["img_size"] == 128
    assert (m.projector_hidden, m.projector_layers, m.projector_dim) == (2048, 3, 16)
    assert (v.global_views, v.global_size, v.global_scale, v.local_views) == (4, 128, (0.08, 1), 0)
    assert (v.jitter, v.jitter_p, v.grayscale_p, v.solarize_p) == (
        (0.8, 0.8, 0.8, 0.2),
        0.8,
        0.2,
        0.2,
    )
    assert (cfg.loss.lam, cfg.loss.num_slices, cfg.loss.num_knots, cfg.loss.t_max) == (
        0.02,
        256,
        17,
        3.0,
    )
    assert cfg.scaling.global_batch == 256 and o.lr == 2e-3 and o.lr_reference_batch == 256
    assert (o.steps, o.warmup_steps) == (800 * (9469 // 256), 9469 // 256)
    assert o.lr * o.min_lr_ratio == 1e-3 and o.grad_clip == 0 and o.weight_decay == 0.05


def test_gigantic_config_is_what_the_issue_asks():
    cfg = load_config(CONFIGS / "imagenet1k_vit_gigantic.yaml")
    assert cfg.model.name == "vit_gigantic_patch14_224"
    assert cfg.scaling.strategy == "fsdp" and cfg.scaling.precision == "bf16"
    assert cfg.scaling.activation_checkpointing and cfg.scaling.use_gpu


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.nme=resnet18"], "Did you mean: 'name'"),
        (["loss.lam=1.5"], "loss.lam=1.5 is invalid: expected a value in (0, 1)"),
        (["loss.lam=0"], "loss.lam=0"),
        (["scaling.batch_size=abc"], "scaling.batch_size"),
        (["scaling.strategy=zero3"], "one of ddp, fsdp"),
        (["optim.warmup_steps=2000"], "optim.warmup_steps=2000"),
        (["data.views.global_size=4"], "data.views.global_size=4"),
        (["lam"], "not key=value"),
        (["model.model_args.num_classes=10"], "the platform sets it"),
        (["scaling.num_workers=[2,1]"], "[min, max] with 1 <= min <= max"),
        (["scaling.num_workers=[1,2,3]"], "scaling.num_workers=[1, 2, 3] is invalid"),
        (["scaling.num_workers=0"], "scaling.num_workers=0 is invalid"),
        (["scaling.resources={CPU: 2}"], "CPU and GPU have their own fields"),
        (["scaling.resize_check_s=-1"], "scaling.resize_check_s=-1.0"),
        (["data.tasks_per_cpu=0"], "data.tasks_per_cpu=0 is invalid: expected an integer >= 1"),
        (["data.node_resource=CPU"], "data.node_resource='CPU' is invalid: expected None or"),
        (
            ["logging.rankme_samples=0", "logging.rankme_every_report=true"],
            "false when logging.rankme_samples is 0",
        ),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=_literal(message)):
        load_config(None, overrides)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")


def test_unknown_timm_name_suggests_close_matches():
    with pytest.raises(ConfigError, match=r"Did you mean: .*vit_base_patch16_224"):
        check_model_name("vit_base_patch16_244")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scaling.batch_size=1", "scaling.num_workers=1"], "needs at least 2"),
        (["data.views.local_size=256"], "larger than data.views.global_size"),
        (
            ["data.source=synthetic", "data.num_samples=100", "scaling.batch_size=64"],
            "no full batch",
        ),
        (["model.name=resnet_18"], "not a timm architecture"),
        (  # one worker of the group takes the whole global batch of 128
            ["data.source=synthetic", "data.num_samples=120", "scaling.num_workers=[1,2]"],
            "split over 1 workers gives 120 images each, fewer than their batch of 128",
        ),
    ],
)
def test_impossible_runs_fail_before_ray(overrides, message, monkeypatch):
    from lejepa_ray.launch import driver, runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was asked for resources before the config was checked")

    monkeypatch.setattr(runtime, "connect", no_ray)
    with pytest.raises(ConfigError, match=message):
        driver.run(load_config(None, overrides))


def test_learning_rate_scales_with_global_batch():
    cfg = load_config(
        None,
        ["optim.lr=5e-4", "scaling.batch_size=64", "scaling.num_workers=4", "optim.accum_steps=2"],
    )
    assert scaled_lr(cfg) == pytest.approx(5e-4)  # 64 × 4 × 2 = 512: the reference batch


def test_an_elastic_group_keeps_the_global_batch_and_splits_it_over_any_size():
    cfg = load_config(None, ["scaling.num_workers=[2,4]", "scaling.batch_size=48"])
    s = cfg.scaling
    assert (s.min_workers, s.max_workers, s.elastic) == (2, 4, True)
    assert s.global_batch == 192 and scaled_lr(cfg) == scaled_lr(
        load_config(None, ["scaling.num_workers=4", "scaling.batch_size=48"])
    )
    assert [batch_split(s.global_batch, w) for w in (2, 3, 4)] == [[96] * 2, [64] * 3, [48] * 4]
    assert [batch_share(s.global_batch, r, 3) for r in range(3)] == [1.0] * 3
    fixed = load_config(None, ["scaling.num_workers=[3,3]"]).scaling
    assert fixed.num_workers == 3 and not fixed.elastic


def test_a_size_that_does_not_divide_the_global_batch_splits_it_within_one_image():
    # The gigantic recipe's range: 512 images over 16 to 32 workers.
    s = load_config(None, ["scaling.num_workers=[16,32]", "scaling.batch_size=16"]).scaling
    assert s.global_batch == 512
    for w in range(16, 33):
        split = batch_split(512, w)
        assert len(split) == w and sum(split) == 512, w
        assert max(split) - min(split) <= 1 and split == sorted(split, reverse=True), w
        assert drawn_per_worker(512, w) == -(-512 // w), w
        # The shares weight each rank's mean loss so that the ranks' average is the global
        # batch's mean: their mean is 1.
        assert sum(batch_share(512, r, w) for r in range(w)) / w == pytest.approx(1.0), w
    assert batch_split(512, 24) == [22] * 8 + [21] * 16
    assert batch_share(512, 0, 24) == pytest.approx(22 * 24 / 512)
    for bad in (0, 513):  # no rank, or a rank without an image
        with pytest.raises(ValueError, match=f"world size {bad} cannot split a batch of 512"):
            batch_split(512, bad)


def test_spot_preemption_and_upload_defaults():
    cfg = load_config(None)
    assert cfg.checkpoint.upload == "async"
    f = cfg.fault
    assert (
        f.preemption_check_steps,
        f.max_preemptions,
        f.relax_collectives_on_preemption,
        f.preemption_grace_s,
    ) == (10, -1, False, 0.0)
    assert isinstance(f.preemption_grace_s, float)
    set_ = load_config(
        None,
        [
            "checkpoint.upload=sync",
            "fault.preemption_check_steps=0",
            "fault.max_preemptions=0",
            "fault.relax_collectives_on_preemption=true",
            "fault.preemption_grace_s=45",
        ],
    )
    assert set_.checkpoint.upload == "sync"
    f = set_.fault
    assert (
        f.preemption_check_steps,
        f.max_preemptions,
        f.relax_collectives_on_preemption,
        f.preemption_grace_s,
    ) == (0, 0, True, 45.0)
    # The YAML written into the run directory keeps them.
    assert load_config_text(to_yaml(set_), tmp=CONFIGS.parent) == set_


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["checkpoint.upload=later"],
            "checkpoint.upload='later' is invalid: expected async or sync",
        ),
        (["checkpoint.upload=ASYNC"], "checkpoint.upload='ASYNC' is invalid"),
        (["fault.preemption_check_steps=-1"], "fault.preemption_check_steps=-1 is invalid"),
        (["fault.max_preemptions=-2"], "fault.max_preemptions=-2 is invalid: expected >= -1"),
        (["fault.preemption_grace_s=-1"], "fault.preemption_grace_s=-1.0 is invalid"),
        (["fault.preemption_grace_s=soon"], "fault.preemption_grace_s"),
        (["fault.preemption_check_steps=1.5"], "fault.preemption_check_steps"),
        (["fault.relax_collectives_on_preemption=maybe"], "fault.relax_collectives_on_preemption"),
    ],
)
def test_bad_preemption_and_upload_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=_literal(message)):
        load_config(None, overrides)


def test_a_range_error_carries_its_field_value_and_expectation():
    """Structured errors: a front end can word them as flags or keyword arguments."""
    with pytest.raises(ConfigError, match=r"loss.lam=2.0 is invalid") as caught:
        load_config(None, ["loss.lam=2"])
    e = caught.value
    assert (e.field, e.value) == ("loss.lam", 2.0)
    assert e.expected is not None and "(0, 1)" in e.expected
