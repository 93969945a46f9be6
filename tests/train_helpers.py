"""Helpers shared by the unit and integration tests of the training step."""

from __future__ import annotations

import itertools

import torch

from lejepa_ray.config import load_config
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train.faults import inject_nonfinite
from lejepa_ray.train.trainer import Trainer


def _trainer(*overrides: str) -> Trainer:
    cfg = load_config(
        None,
        [
            "model.name=test_resnet",  # timm's 0.4M-parameter test ResNet: 8x faster steps
            "model.projector_hidden=64",
            "model.projector_dim=16",
            "data.views.global_size=32",
            "data.views.local_size=16",
            "data.views.local_views=2",
            "loss.num_slices=64",
            "optim.steps=6",
            "optim.warmup_steps=2",
            "scaling.batch_size=8",
            "scaling.num_workers=1",
            *overrides,
        ],
    )
    trainer = Trainer(cfg, resolve_backbone(cfg), torch.device("cpu"))
    inject_nonfinite(trainer, cfg.fault.inject_nonfinite_steps)  # as the worker does
    return trainer


def _batches(n: int = 8):
    gen = torch.Generator().manual_seed(0)
    batch = {
        "global": torch.randint(0, 256, (n, 2, 3, 32, 32), generator=gen, dtype=torch.uint8),
        "local": torch.randint(0, 256, (n, 2, 3, 16, 16), generator=gen, dtype=torch.uint8),
    }
    return itertools.repeat(batch)


def _same_step(*overrides: str, model: str = "test_resnet") -> None:
    batch = next(_batches())
    base = _trainer(f"model.name={model}").train_step([batch])
    other = _trainer(f"model.name={model}", *overrides).train_step([batch])
    torch.testing.assert_close(other.loss.stack(), base.loss.stack(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other.grad_norm, base.grad_norm, rtol=1e-4, atol=1e-6)
