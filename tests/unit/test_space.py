"""Search spaces: the YAML format, its checks, and the mapping onto Ray Tune and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from lejepa_ray.config import ConfigError, load_config
from lejepa_ray.tune.space import load_space, overrides, to_tune

SPACES = Path(__file__).resolve().parents[2] / "tune_spaces"


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_shipped_spaces_load_and_map_onto_tune():
    from ray.tune.search.sample import Categorical, Float

    lam = {d.key: d for d in load_space(SPACES / "lambda_slices.yaml")}
    assert (lam["loss.lam"].sampler, lam["loss.lam"].values) == ("loguniform", (0.005, 0.5))
    assert lam["loss.num_slices"].values == (64, 256, 1024, 4096)
    tune_space = to_tune(list(lam.values()))
    assert isinstance(tune_space["loss.lam"], Float)
    assert isinstance(tune_space["loss.num_slices"], Categorical)
    quick = {d.key: d for d in load_space(SPACES / "quick.yaml")}
    assert quick["optim.steps"].sampler == "fixed"
    selection = {d.key: d for d in load_space(SPACES / "selection.yaml")}
    assert selection["loss.lam"].values == (0.005, 0.5)
    assert selection["model.name"].values == ("resnet10t", "regnetx_002")


def test_every_sampler_and_the_overrides_a_trial_gets(tmp_path):
    from ray.tune.search.sample import Integer

    space = load_space(
        _space(
            tmp_path,
            """
loss.lam: {uniform: [0.01, 0.1]}
optim.warmup_steps: {randint: [0, 10]}
model.name: {grid: [resnet18, vit_tiny_patch16_224]}
model.model_args: {drop_path_rate: 0.1}
""",
        )
    )
    tune_space = to_tune(space)
    assert isinstance(tune_space["optim.warmup_steps"], Integer)
    assert tune_space["model.name"] == {"grid_search": ["resnet18", "vit_tiny_patch16_224"]}
    assert tune_space["model.model_args"] == {"drop_path_rate": 0.1}
    trial = {
        "loss.lam": 0.0123456789012345,
        "optim.warmup_steps": 3,
        "model.name": "vit_tiny_patch16_224",
        "model.model_args": {"drop_path_rate": 0.1},
    }
    cfg = load_config(None, overrides(trial))
    assert cfg.loss.lam == 0.0123456789012345  # no precision lost on the way
    assert cfg.optim.warmup_steps == 3 and cfg.model.name == "vit_tiny_patch16_224"
    assert cfg.model.model_args == {"drop_path_rate": 0.1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss.lamda: {choice: [0.1]}", r"loss\.lamda=0\.1 is not a valid value: .*lamda"),
        ("loss.lam: {loguniform: [0.0, 0.5]}", r"loguniform needs low > 0"),
        ("loss.lam: {uniform: [0.5, 0.1]}", r"takes \[low, high\] numbers with low < high"),
        ("loss.lam: {uniform: [0.1, 1.5]}", r"loss\.lam=1\.5 is not a valid value"),
        ("loss.lam: {normal: [0, 1]}", r"loss\.lam=\{'normal': \[0, 1\]\} is not a valid value"),
        ("loss.num_slices: {choice: []}", r"choice takes a non-empty list"),
        ("optim.steps: {randint: [1.5, 9]}", r"randint takes integers"),
        (
            "model.name: {choice: [resnet18, vit_smol_patch16_224]}",
            r"'vit_smol_patch16_224' is not a timm architecture. Did you mean",
        ),
        ("[1, 2]", r"must map dotted config keys to samplers"),
    ],
)
def test_bad_spaces_fail_with_the_key_and_what_to_do(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, text))


def test_missing_file_points_to_the_examples(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; see tune_spaces/"):
        load_space(tmp_path / "nope.yaml")


def test_a_top_level_key_with_a_sampler_is_a_space_not_a_pretrain_config(tmp_path):
    from lejepa_ray.tune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("seed:\n  choice: [0, 1, 2]\nloss.lam:\n  loguniform: [0.01, 0.1]\n")
    assert [d.sampler for d in load_space(path)] == ["choice", "loguniform"]
    path.write_text("seed: 3\nloss:\n  lam: 0.05\n")
    with pytest.raises(ConfigError, match="looks like a pretrain config, not a search space"):
        load_space(path)
