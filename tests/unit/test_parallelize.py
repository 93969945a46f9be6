"""DDP and FSDP2 on 2 gloo ranks: one LeJEPA step, real sharding, meta-device init at 1.8B.

Multi-process, Ray and slow tests: ``tests/integration/test_parallelize.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lejepa_ray.config import ModelConfig
from lejepa_ray.model.encoder import LeJEPAEncoder, resolve
from lejepa_ray.model.parallelize import (
    SMALL_PARAMETER,
    block_modules,
    materialize,
    meta_parameters,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vit_tiny_patch16_224", ["patch_embed.proj", *(f"blocks.{i}" for i in range(12))]),
        ("resnet18", [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]),
        ("swin_tiny_patch4_window7_224", None),
        ("convnext_atto", None),
    ],
)
def test_blocks_are_found_from_timm_group_matcher(name, expected):
    import timm

    backbone = timm.create_model(name, num_classes=0, device="meta")
    blocks = block_modules(backbone)
    names = {id(m): n for n, m in backbone.named_modules()}
    found = sorted(names[id(b)] for b in blocks)
    if expected is not None:
        assert found == sorted(expected)
    assert len(found) >= 8
    # Blocks hold most parameters; the rest (stem, norms) stays with the root.
    in_blocks = sum(p.numel() for b in blocks for p in b.parameters())
    assert in_blocks > 0.8 * sum(p.numel() for p in backbone.parameters())


def test_meta_init_follows_timm_and_leaves_no_parameter_uninitialized():
    cfg = ModelConfig(name="vit_tiny_patch16_224", projector_hidden=32, projector_dim=16)
    with meta_parameters():
        encoder = LeJEPAEncoder(resolve(cfg, 32, 16), cfg)
    assert encoder.backbone.blocks[0].mlp.fc1.weight.is_meta
    materialize(encoder, torch.device("cpu"), seed=0)
    backbone = encoder.backbone
    assert backbone.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)  # timm's ViT init
    assert backbone.blocks[0].attn.qkv.bias.abs().max() == 0
    assert torch.equal(backbone.blocks[0].norm1.weight, torch.ones(192))

    # Small parameters set once in __init__ (ConvNeXt's layer-scale gamma) keep their value.
    cfg = ModelConfig(name="convnext_atto", projector_hidden=32, projector_dim=16)
    with meta_parameters():
        encoder = LeJEPAEncoder(resolve(cfg, 32, 16), cfg)
    materialize(encoder, torch.device("cpu"), seed=0)
    gamma = encoder.backbone.stages[0].blocks[0].gamma
    assert torch.equal(gamma, torch.full_like(gamma, 1e-6))

    class Custom(nn.Module):  # a large parameter no initializer knows
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(SMALL_PARAMETER + 1))

    with meta_parameters():
        model = nn.Sequential(nn.Linear(3, 3), Custom())
    with pytest.raises(RuntimeError, match=r"left 1 parameter\(s\) uninitialized \(1.table\)"):
        materialize(model, torch.device("cpu"), seed=0)
