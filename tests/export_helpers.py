"""A small trained checkpoint, for the export and evaluate tests."""

from __future__ import annotations

import torch

from lejepa_ray.config import load_config, to_yaml
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train import checkpoint
from lejepa_ray.train.checkpoint import TrainState
from lejepa_ray.train.trainer import Trainer


def _trained_checkpoint(tmp_path, name: str):
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            "model.projector_hidden=64",
            "model.projector_dim=16",
            "data.views.global_size=32",
            "data.views.local_size=16",
            "data.views.local_views=2",
            "loss.num_slices=64",
            "optim.steps=4",
            "optim.warmup_steps=1",
            "scaling.batch_size=8",
            "scaling.num_workers=1",
        ],
    )
    trainer = Trainer(cfg, resolve_backbone(cfg), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        trainer.train_step(
            [
                {
                    "global": torch.randint(
                        0, 256, (8, 2, 3, 32, 32), generator=gen, dtype=torch.uint8
                    ),
                    "local": torch.randint(
                        0, 256, (8, 2, 3, 16, 16), generator=gen, dtype=torch.uint8
                    ),
                }
            ]
        )
    path = tmp_path / "run" / "checkpoint_00000002"
    path.mkdir(parents=True)
    checkpoint.save(path, trainer.tensors, TrainState(step=2, model=name), to_yaml(cfg))
    return path, trainer
