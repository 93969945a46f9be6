"""The shipped recipes train as they are: a few CPU steps at their real model and view sizes,
on views the real view pipeline makes from generated images (no Ray: the steps are what is
checked; the pipeline has tests of its own)."""

from __future__ import annotations

from pathlib import Path

import torch
from images import photo

from lejepa_ray.config import load_config
from lejepa_ray.data.views import ViewMaker
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def test_the_imagenette_recipe_steps_at_its_real_sizes():
    # Only what a CPU cannot run changes: the device, fp32, 2 images a step instead of 256.
    cfg = load_config(
        CONFIGS / "imagenette_vit_small.yaml",
        ["scaling.use_gpu=false", "scaling.precision=fp32", "scaling.batch_size=2"],
    )
    maker = ViewMaker.of(cfg.data)
    # Imagenette's 160 px images: short side 160.
    images = [photo(213, 160, seed=0), photo(160, 240, seed=1)]
    batch = maker.batch(images, ["a", "b"], epoch=0)
    assert batch.global_views.shape == (2, 4, 3, 128, 128) and batch.local_views.shape[1] == 0
    trainer = Trainer(cfg, resolve_backbone(cfg), torch.device("cpu"))
    backbone = trainer.encoder.backbone
    assert backbone.patch_embed.grid_size == (16, 16)  # ViT-S/8 at 128 px: 256 patches
    linears = [m for m in trainer.encoder.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 16]
    views = {"global": torch.from_numpy(batch.global_views)}
    results = [trainer.train_step([views]) for _ in range(2)]
    assert all(r.finite for r in results)
    assert float(results[0].loss.total) > 0
