"""Backbone + projector, and how each architecture family is made to take the local views."""

from __future__ import annotations

import pytest
import torch

from lejepa_ray.config import ConfigError, ModelConfig
from lejepa_ray.model.encoder import LeJEPAEncoder, resolve


def _cfg(name: str, **kw) -> ModelConfig:
    return ModelConfig(name=name, projector_hidden=32, projector_dim=16, **kw)


@pytest.mark.parametrize(
    ("name", "global_size", "local_size", "options", "local_input", "resized"),
    [
        ("resnet18", 64, 32, {}, 32, False),  # CNNs take any size as built
        (
            "vit_tiny_patch16_224",
            64,
            40,
            {"dynamic_img_size": True, "dynamic_img_pad": True},
            40,
            False,
        ),  # 40 is no multiple of the patch: padded
        ("swin_tiny_patch4_window7_224", 64, 32, {"strict_img_size": False}, 32, False),
        ("maxvit_nano_rw_256", 64, 32, {"img_size": 64}, 64, True),  # fixed resolution
    ],
)
def test_each_family_gets_views_it_can_take(
    name, global_size, local_size, options, local_input, resized
):
    spec = resolve(_cfg(name), global_size, local_size)
    assert spec.kwargs == options
    assert (spec.local_size, spec.local_resized) == (local_input, resized)
    encoder = LeJEPAEncoder(spec, _cfg(name)).eval()
    g = torch.randint(0, 256, (2, 2, 3, global_size, global_size), dtype=torch.uint8)
    loc = torch.randint(0, 256, (2, 3, 3, local_size, local_size), dtype=torch.uint8)
    with torch.no_grad():
        z = encoder(g, loc)
    assert z.shape == (5, 2, 16) and torch.isfinite(z).all()


def test_views_of_one_sample_line_up():
    """Row b of every view is sample b: a batch of two identical samples gives equal rows."""
    spec = resolve(_cfg("resnet18"), 32, 16)
    encoder = LeJEPAEncoder(spec, _cfg("resnet18")).eval()
    g = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8).expand(3, -1, -1, -1, -1)
    loc = torch.randint(0, 256, (1, 4, 3, 16, 16), dtype=torch.uint8).expand(3, -1, -1, -1, -1)
    with torch.no_grad():
        z = encoder(g, loc)
    assert z.shape == (6, 3, 16)
    torch.testing.assert_close(z[:, 0], z[:, 2])
    assert not torch.allclose(z[0, 0], z[2, 0])  # a global and a local view differ


def test_user_model_args_reach_timm():
    spec = resolve(_cfg("vit_tiny_patch16_224", model_args={"drop_path_rate": 0.1}), 64, 32)
    assert spec.kwargs["drop_path_rate"] == 0.1
    encoder = LeJEPAEncoder(spec, _cfg("vit_tiny_patch16_224"))
    assert encoder.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_global_size_the_model_cannot_take():
    with pytest.raises(ConfigError, match="does not accept 50×50 images"):
        resolve(_cfg("maxvit_nano_rw_256"), 50, 24)


def test_projector_is_the_batchnorm_mlp():
    cfg = ModelConfig(name="resnet18", projector_hidden=64, projector_dim=8, projector_layers=3)
    encoder = LeJEPAEncoder(resolve(cfg, 32, None), cfg)
    layers = [type(m).__name__ for m in encoder.projector]
    assert layers.count("Linear") == 3 and layers.count("BatchNorm1d") == 2
    assert encoder.projector[0].in_features == encoder.backbone.num_features == 512
    linears = [m for m in encoder.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64, 8]


@pytest.mark.parametrize(("norm", "norms"), [("layer", ["LayerNorm"] * 2), ("none", [])])
def test_the_projectors_normalization_is_chosen_by_name(norm, norms):
    cfg = ModelConfig(name="resnet10t", projector_hidden=32, projector_dim=8, projector_norm=norm)
    encoder = LeJEPAEncoder(resolve(cfg, 32, None), cfg)
    layers = [type(m).__name__ for m in encoder.projector]
    assert [name for name in layers if "Norm" in name] == norms
    assert layers.count("Linear") == 3
    with pytest.raises(ConfigError, match=r"model\.projector_norm='group' is invalid"):
        ModelConfig(projector_norm="group")


def test_projector_input_is_what_the_backbone_returns():
    # MobileNetV3's head convolution follows the pooling: num_features 960, output 1280.
    spec = resolve(
        ModelConfig(name="mobilenetv3_large_100", projector_hidden=32, projector_dim=8), 64, 32
    )
    assert spec.num_features == 1280
    encoder = LeJEPAEncoder(
        spec, ModelConfig(name="mobilenetv3_large_100", projector_hidden=32, projector_dim=8)
    )
    views = torch.randint(0, 256, (2, 1, 3, 64, 64), dtype=torch.uint8)
    assert encoder(views).shape == (1, 2, 8)
