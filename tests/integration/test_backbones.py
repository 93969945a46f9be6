"""Every architecture in tune_spaces/backbones.yaml takes one LeJEPA step at the default view
resolutions (2 × 224 px global, 2 × 96 px local views), on CPU with a batch of 2.

The one-process tests are in ``tests/unit/test_backbones.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lejepa_ray.config import load_config
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train.trainer import Trainer
from lejepa_ray.tune.space import load_space

SPACE = Path(__file__).resolve().parents[2] / "tune_spaces" / "backbones.yaml"
NAMES = list(next(d for d in load_space(SPACE) if d.key == "model.name").values)


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
