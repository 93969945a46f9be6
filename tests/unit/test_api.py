"""The Python API (``lejepa_ray.pretrain``, ``evaluate``, ``export``, ``embed``, ``sweep``),
used only through the names the package exports, as a user would.

Ray runs: the README's Python block, in ``tests/integration/test_readme.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from export_helpers import _trained_checkpoint

import lejepa_ray
import lejepa_ray.api as api

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_exports_the_api_and_each_result_is_a_dataclass():
    import dataclasses

    for name in ("pretrain", "evaluate", "export", "embed", "sweep"):
        assert callable(getattr(lejepa_ray, name)) and name in lejepa_ray.__all__
    for name in api.__all__:
        if name.endswith(("Options", "Result")):
            assert dataclasses.is_dataclass(getattr(api, name)), name
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        lejepa_ray.trian  # noqa: B018


def test_export_and_evaluate_take_keywords_an_options_object_or_a_yaml_file(tmp_path):
    run, _ = _trained_checkpoint(tmp_path, "resnet18")
    exported = lejepa_ray.export(source=str(run), out_dir=str(tmp_path / "out"))
    assert isinstance(exported, api.ExportResult) and exported.architecture == "resnet18"

    by_keywords = lejepa_ray.evaluate(source=str(tmp_path / "out"), data="digits", max_samples=200)
    options = api.EvalOptions(source=str(run), data="digits", max_samples=200)
    by_object = lejepa_ray.evaluate(options)
    (tmp_path / "eval.yaml").write_text(f"source: {run}\ndata: digits\nk: 5\n")
    by_file = lejepa_ray.evaluate(str(tmp_path / "eval.yaml"), max_samples=200, k=20)
    assert isinstance(by_keywords, api.EvalResult)
    # The same backbone (export and checkpoint) and the same options: the same accuracies.
    same = {(r.knn_top1, r.linear_top1) for r in (by_keywords, by_object, by_file)}
    assert len(same) == 1, same
    assert json.loads(by_file.to_json())["bank"] == by_keywords.bank


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lejepa_ray.evaluate(source="r", data="digits", kk=3), "has no option 'kk'"),
        (lambda: lejepa_ray.evaluate(source="r"), "EvalOptions needs data"),
        (lambda: lejepa_ray.evaluate(source="r", data="digits", k=0), "k=0 is invalid"),
        (lambda: lejepa_ray.export(str(ROOT), out_dir="o"), "is a folder, but the first"),
        (lambda: lejepa_ray.export(source="r", out_dir="o", format="tf"), "format must be"),
        (
            lambda: lejepa_ray.sweep(
                space=str(ROOT / "platform/lejepa_ray/configs/quickstart.yaml")
            ),
            "looks like a pretrain config, not a search space",
        ),
        (lambda: lejepa_ray.pretrain(overrides={"loss.lam": 2.0}), "loss.lam=2.0 is invalid"),
        (lambda: lejepa_ray.pretrain(model="resnet_nope"), "is not a timm architecture"),
        (lambda: lejepa_ray.pretrain(data="/nonexistent/imgs"), "neither a source"),
        (
            lambda: lejepa_ray.pretrain(str(ROOT / "jobs/configs/imagenet1k_vit_large.yaml")),
            "is the recipe's placeholder",
        ),
    ],
    ids=[
        "unknown-option",
        "missing-option",
        "out-of-range",
        "folder-as-options",
        "bad-format",
        "config-as-space",
        "bad-override",
        "bad-model",
        "missing-data",
        "placeholder",
    ],
)
def test_bad_input_raises_a_lejepa_ray_error_before_ray(call, message, monkeypatch):
    from lejepa_ray.errors import LejepaRayError
    from lejepa_ray.launch import runtime

    monkeypatch.setattr(runtime, "connect", lambda *a, **k: pytest.fail("Ray was started"))
    with pytest.raises(LejepaRayError, match=message.replace("(", r"\(")):
        call()


def test_pretrain_s_keywords_set_the_config_they_name(monkeypatch, tmp_path):
    """``data``, ``model`` and ``out`` are shorthands for config keys; ``overrides`` win."""
    from lejepa_ray.launch import driver

    seen = []
    monkeypatch.setattr(driver, "run", lambda cfg: seen.append(cfg) or "ran")
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    out = lejepa_ray.pretrain(
        data=str(tmp_path / "imgs"),
        model="resnet18",
        out=str(tmp_path / "runs" / "mine"),
        overrides={"optim.steps": 90, "scaling.num_workers": [1, 2]},
    )
    cfg = seen[0]
    assert out == "ran" and isinstance(cfg, lejepa_ray.PretrainConfig)
    assert (cfg.data.source, cfg.data.path) == ("folder", str(tmp_path / "imgs"))
    assert (cfg.model.name, cfg.storage_path, cfg.name) == (
        "resnet18",
        str(tmp_path / "runs"),
        "mine",
    )
    assert cfg.optim.steps == 90 and cfg.scaling.num_workers == [1, 2]
    assert cfg.data.views.global_size == 32  # the rest is the packaged quickstart
    again = lejepa_ray.pretrain(cfg, overrides=["optim.steps=30"])
    assert again == "ran" and seen[1].optim.steps == 30 and seen[1].model.name == "resnet18"


@pytest.mark.parametrize(
    ("out", "where"),
    [
        ("runs/mine", ("runs", "mine")),
        ("/abs/mine", ("/abs", "mine")),
        ("/mine", ("/", "mine")),
        ("mine", (".", "mine")),
        ("s3://bucket/runs/mine/", ("s3://bucket/runs", "mine")),
    ],
)
def test_out_is_a_run_folder_local_or_on_object_storage(out, where):
    assert api.run_location(out) == where


@pytest.mark.parametrize("out", ["/", "s3://bucket", "s3://bucket/"])
def test_out_that_names_no_folder_is_refused(out):
    from lejepa_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="run folder"):
        api.run_location(out)


def test_overrides_take_paths_and_numpy_values_and_data_takes_a_split(monkeypatch, tmp_path):
    import numpy as np

    from lejepa_ray.launch import driver

    seen = []
    monkeypatch.setattr(driver, "run", seen.append)
    lejepa_ray.pretrain(
        data="digits:val",
        overrides={"storage_path": tmp_path / "runs", "loss.lam": np.float32(0.25)},
    )
    cfg = seen[0]
    assert (cfg.data.source, cfg.data.split) == ("digits", "val")
    assert cfg.storage_path == str(tmp_path / "runs") and cfg.loss.lam == 0.25
    lejepa_ray.pretrain(data="digits")
    assert seen[1].data.split == "train"  # the quickstart's, kept without a suffix
