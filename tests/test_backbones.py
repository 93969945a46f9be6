"""Every architecture in tune_spaces/backbones.yaml takes one LeJEPA step at the default view
resolutions (2 × 224 px global, 2 × 96 px local views), on CPU with a batch of 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lejepa_ray.config import load_config
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train.trainer import Trainer
from lejepa_ray.tune.space import load_space

SPACE = Path(__file__).resolve().parents[1] / "tune_spaces" / "backbones.yaml"
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_one_lejepa_step(name):
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            "model.projector_hidden=256",
            "model.projector_dim=64",
            "data.views.global_size=224",
            "data.views.local_size=96",
            "data.views.global_views=2",
            "data.views.local_views=2",
            "loss.num_slices=64",
            "optim.steps=2",
            "optim.warmup_steps=1",
            "scaling.batch_size=2",
            "scaling.num_workers=1",
        ],
    )
    trainer = Trainer(cfg, resolve_backbone(cfg), torch.device("cpu"))
    before = [p.detach().clone() for p in trainer.encoder.backbone.parameters()]
    gen = torch.Generator().manual_seed(0)
    result = trainer.train_step(
        [
            {
                "global": torch.randint(
                    0, 256, (2, 2, 3, 224, 224), generator=gen, dtype=torch.uint8
                ),
                "local": torch.randint(0, 256, (2, 2, 3, 96, 96), generator=gen, dtype=torch.uint8),
            }
        ]
    )
    assert result.finite and float(result.grad_norm) > 0
    after = list(trainer.encoder.backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # it learned
