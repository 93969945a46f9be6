"""AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import itertools

import pytest
import torch

from lejepa_ray.config import ModelConfig, OptimConfig
from lejepa_ray.model.encoder import LeJEPAEncoder, resolve
from lejepa_ray.train.optim import build_optimizer, build_scheduler, lr_factor


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    cfg = OptimConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[4] == pytest.approx(0.5)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_scheduler_drives_the_optimizer():
    model = torch.nn.Linear(4, 4)
    cfg = OptimConfig(steps=20, warmup_steps=5)
    opt = build_optimizer(model, cfg, lr=1e-3)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])


def test_weight_decay_skips_biases_norms_and_tokens():
    cfg = ModelConfig(name="vit_tiny_patch16_224", projector_hidden=32, projector_dim=16)
    encoder = LeJEPAEncoder(resolve(cfg, 32, 16), cfg)
    opt = build_optimizer(encoder, OptimConfig(weight_decay=0.05), lr=1e-3)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in encoder.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    assert "backbone.blocks.0.attn.qkv.weight" in decayed_names
    assert "backbone.pos_embed" not in decayed_names
    assert "backbone.cls_token" not in decayed_names
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed_names)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
