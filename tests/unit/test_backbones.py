"""Every architecture in tune_spaces/backbones.yaml takes one LeJEPA step at the default view
resolutions (2 × 224 px global, 2 × 96 px local views), on CPU with a batch of 2.

Multi-process, Ray and slow tests: ``tests/integration/test_backbones.py``."""

from __future__ import annotations

from pathlib import Path

from lejepa_ray.tune.space import load_space

SPACE = Path(__file__).resolve().parents[2] / "tune_spaces" / "backbones.yaml"
NAMES = list(next(d for d in load_space(SPACE) if d.key == "model.name").values)
FAMILIES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "seresnet",
    "vit_",
    "deit",
    "beit",
    "eva02",
    "cait",
    "xcit",
    "convnext_",
    "convnextv2",
    "maxvit",
    "maxxvit",
    "coatnet",
    "swin_",
    "swinv2",
    "efficientnet",
    "tf_efficientnet",
    "mobilenet",
    "regnet",
    "densenet",
    "pvt_v2",
    "poolformer",
    "edgenext",
    "mobilevit",
    "fastvit",
    "levit",
)


def test_the_space_names_60_architectures_of_at_least_6_families():
    assert len(NAMES) >= 60 and len(set(NAMES)) == len(NAMES)
    families = {next(f for f in FAMILIES if n.startswith(f)) for n in NAMES}
    assert {"resnet", "vit_", "convnext_", "maxvit", "swin_", "efficientnet", "regnet"} <= families
