"""Helpers for the checkpoint tests (unit and integration) and the storage tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from lejepa_ray.config import load_config, to_yaml
from lejepa_ray.model.encoder import resolve_backbone
from lejepa_ray.train import checkpoint
from lejepa_ray.train.checkpoint import TrainState
from lejepa_ray.train.trainer import Trainer

SMALL = [
    "model.projector_hidden=64",
    "model.projector_dim=16",
    "data.views.global_size=32",
    "data.views.local_size=16",
    "data.views.local_views=2",
    "loss.num_slices=64",
    "optim.steps=10",
    "optim.warmup_steps=3",
    "optim.lr=1e-3",
    "scaling.batch_size=8",
]


def _config(*overrides: str):
    # timm's 0.4M-parameter test ResNet (BatchNorm included): what is checkpointed, not which
    # architecture, is the point here.
    base = ["model.name=test_resnet", "scaling.num_workers=1", *SMALL]
    return load_config(None, [*base, *overrides])


def _trainer(*overrides: str) -> Trainer:
    cfg = _config(*overrides)
    return Trainer(cfg, resolve_backbone(cfg), torch.device("cpu"))


def _batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "global": torch.randint(0, 256, (8, 2, 3, 32, 32), generator=gen, dtype=torch.uint8),
        "local": torch.randint(0, 256, (8, 2, 3, 16, 16), generator=gen, dtype=torch.uint8),
    }


def _state(trainer: Trainer, **data) -> TrainState:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return TrainState(
        step=trainer.step,
        world_size=world,
        skipped_steps=trainer.skipped_steps,
        scheduler=trainer.scheduler.state_dict(),
        model=trainer.cfg.model.name,
        **data,
    )


def _tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every parameter, buffer and optimizer tensor, gathered and by name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model, optim = get_state_dict(
        trainer.model, trainer.optimizer, options=StateDictOptions(full_state_dict=True)
    )
    out = {f"model.{k}": v.detach().clone() for k, v in model.items()}
    for name, slots in optim["state"].items():
        out.update({f"optim.{name}.{k}": v.detach().clone() for k, v in slots.items()})
    return out


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, t in a.items():
        assert torch.equal(t, b[name]), name


def _save(trainer: Trainer, path: Path, **data) -> None:
    trainer.sync_buffers()
    checkpoint.save(path, trainer.tensors, _state(trainer, **data), to_yaml(trainer.cfg))


def _load(location, trainer: Trainer, **kwargs) -> TrainState:
    """What a resuming worker does: the tensors, then the schedule and counters."""
    state = checkpoint.load(location, trainer.tensors, model_name=trainer.cfg.model.name, **kwargs)
    trainer.restore(state)
    return state
