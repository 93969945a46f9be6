"""AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from lejepa_ray.config import ModelConfig, OptimConfig
from lejepa_ray.errors import ConfigError
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


def test_every_adamw_implementation_takes_the_same_steps():
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
    trained = {}
    for name in ("fused", "foreach", "for-loop"):
        model = copy.deepcopy(reference)
        opt = build_optimizer(
            model, OptimConfig(steps=10, warmup_steps=1, implementation=name), 1e-2
        )
        # Both set for for-loop: left None, torch picks foreach for CUDA parameters.
        assert opt.defaults["fused"] is {"fused": True, "foreach": None}.get(name, False)
        assert opt.defaults["foreach"] is {"foreach": True, "fused": None}.get(name, False)
        for step in range(3):
            opt.zero_grad()
            model(
                torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
            ).square().sum().backward()
            opt.step()
        trained[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = (trained["for-loop"] - torch.cat([p.flatten() for p in reference.parameters()])).abs()
    assert moved.max() > 1e-3  # the steps did move the weights
    torch.testing.assert_close(trained["fused"], trained["for-loop"])
    torch.testing.assert_close(trained["foreach"], trained["for-loop"])


def test_an_unknown_adamw_implementation_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"optim\.implementation.*fused, foreach, for-loop"):
        OptimConfig(implementation="apex")
