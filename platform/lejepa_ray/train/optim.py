"""AdamW with decoupled weight decay on weights only, and a linear warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from lejepa_ray.train.config import ADAMW_IMPLEMENTATIONS, OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters at peak learning rate ``lr``.

    Weight decay applies to matrices and kernels only: biases, norm scales and the tokens and
    position embeddings the backbone lists in ``no_weight_decay()`` are not decayed.
    """
    # lazy: timm takes about a second to import; only building an optimizer needs it.
    from timm.optim import param_groups_weight_decay

    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            skip.update(f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay())
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    beta1, beta2 = cfg.betas
    kernels = ADAMW_IMPLEMENTATIONS[cfg.implementation]
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), **kernels)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear from
    1/warmup to 1 over ``warmup_steps``, then a cosine to ``min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule :func:`lr_factor` (call ``step()`` after each update)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
