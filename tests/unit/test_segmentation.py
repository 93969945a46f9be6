"""Label-free segmentation (``lejepa-ray visualize``): IoU, DINO's threshold, PCA colours, the
attention read from a timm ViT, the synthetic source's true masks, and the command itself on a
small checkpoint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from scipy.linalg import hadamard

from lejepa_ray.cli import main
from lejepa_ray.data.synthetic import SHAPES, synthetic_image, synthetic_mask
from lejepa_ray.errors import ConfigError
from lejepa_ray.evaluation.segmentation import (
    centred_disc,
    cls_attention,
    dino_mask,
    foreground_iou,
    patch_features,
    pca_rgb,
    upsample,
)
from lejepa_ray.evaluation.visualize import score_iou

# --- IoU --------------------------------------------------------------------------------------


def _masks(*rows_and_cols: tuple[slice, slice], size: int = 4) -> np.ndarray:
    out = np.zeros((len(rows_and_cols), size, size), bool)
    for i, (r, c) in enumerate(rows_and_cols):
        out[i, r, c] = True
    return out


def test_iou_of_identical_disjoint_and_partly_overlapping_masks():
    a = _masks((slice(0, 2), slice(0, 4)), (slice(0, 2), slice(0, 4)), (slice(0, 2), slice(0, 4)))
    b = _masks((slice(0, 2), slice(0, 4)), (slice(2, 4), slice(0, 4)), (slice(1, 3), slice(0, 4)))
    iou = foreground_iou(a, b)
    # identical; disjoint; 4 pixels shared of the 12 either covers
    assert iou.tolist() == [1.0, 0.0, pytest.approx(1 / 3)]
    assert iou.mean() == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert foreground_iou(torch.from_numpy(a), torch.from_numpy(b)).tolist() == iou.tolist()


def test_iou_rule_for_empty_masks():
    empty, full = np.zeros((1, 3, 3), bool), np.ones((1, 3, 3), bool)
    assert foreground_iou(empty, empty).tolist() == [1.0]  # documented: exactly right
    assert foreground_iou(empty, full).tolist() == [0.0]
    assert foreground_iou(full, empty).tolist() == [0.0]
    with pytest.raises(ValueError, match="must both be"):
        foreground_iou(empty, np.zeros((1, 3, 4), bool))


def test_centred_disc_covers_the_asked_area():
    disc = centred_disc((64, 64), 0.2)
    assert disc.mean() == pytest.approx(0.2, abs=0.01)
    assert disc[32, 32] and not disc[0, 0]
    assert not centred_disc((8, 8), 0.0).any()


# --- DINO's threshold -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attention", "kept"),
    [
        # ascending 0.05, 0.15, 0.3, 0.5: cumulative 0.05, 0.2, 0.5, 1 -> above 0.4: 0.3 and 0.5
        ([[0.5, 0.05], [0.15, 0.3]], [[True, False], [False, True]]),
        # one patch holds 0.7 >= 0.6: it alone
        ([[0.1, 0.7], [0.1, 0.1]], [[False, True], [False, False]]),
        # unnormalized (x 10) and uniform: 3 of 4 equal patches hold 0.75, 2 only 0.5
        ([[2.5, 2.5], [2.5, 2.5]], [[False, True], [True, True]]),
    ],
    ids=["two-largest", "one-dominant", "uniform"],
)
def test_dino_mask_keeps_the_patches_holding_60_percent_of_the_mass(attention, kept):
    assert dino_mask(torch.tensor(attention)).tolist() == kept


def test_dino_mask_works_per_map_over_leading_dimensions():
    maps = torch.tensor([[[0.5, 0.05], [0.15, 0.3]], [[0.1, 0.7], [0.1, 0.1]]])  # (2, 2, 2)
    batched = dino_mask(maps[None].repeat(3, 1, 1, 1))  # (3 images, 2 heads, 2, 2)
    assert batched.shape == (3, 2, 2, 2)
    for i in range(3):
        for h in range(2):
            assert torch.equal(batched[i, h], dino_mask(maps[h]))
    assert dino_mask(maps, threshold=1.0).all()  # all the mass: every non-zero patch


def test_upsample_repeats_each_patch_over_its_pixels_and_crops_the_padding():
    grid = torch.tensor([[1, 2], [3, 4]])
    top, bottom = [1, 1, 2, 2], [3, 3, 4, 4]
    assert upsample(grid, (4, 4)).tolist() == [top, top, bottom, bottom]
    assert upsample(grid, (3, 3)).tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4]]  # padded grid
    assert upsample(grid > 2, (4, 4)).dtype == torch.bool


# --- PCA colours ------------------------------------------------------------------------------


def test_pca_rgb_of_features_with_known_components():
    """Features (2 images, 4 × 4 patches, 8 channels) along three orthogonal ±1 patterns (Hadamard
    columns) with variances 100, 25 and 1: the components are those patterns, so each colour
    channel is its pattern min-max scaled to {0, 1}, the first in red."""
    h = hadamard(32).astype(np.float64)
    patterns = h[:, 1:4]  # zero-mean, orthogonal
    mixing = np.zeros((3, 8))
    mixing[0, 5], mixing[1, 2], mixing[2, 7] = 10.0, 5.0, 1.0
    feats = torch.from_numpy(patterns @ mixing).reshape(2, 4, 4, 8)
    rgb = pca_rgb(feats)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == torch.float32
    # the sign of each component: its largest loading positive, so + on the pattern is 1
    expected = torch.from_numpy((patterns + 1) / 2).float().reshape(2, 4, 4, 3)
    assert torch.allclose(rgb, expected, atol=1e-6)


def test_pca_rgb_of_constant_or_narrow_features_is_zero_where_nothing_varies():
    rgb = pca_rgb(torch.ones(1, 2, 2, 5))
    assert torch.equal(rgb, torch.zeros(1, 2, 2, 3))
    two = pca_rgb(torch.arange(8.0).reshape(1, 2, 2, 2))  # 2 channels: the third stays 0
    assert torch.equal(two[..., 2], torch.zeros(1, 2, 2))
    assert two[..., 0].min() == 0 and two[..., 0].max() == 1


# --- attention of a timm ViT ------------------------------------------------------------------


def _tiny_vit(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, pretrained=False, num_classes=0, **kwargs
    ).eval()


@pytest.mark.parametrize("reg_tokens", [0, 2], ids=["cls", "cls+registers"])
def test_cls_attention_is_the_last_block_s_softmax_row_over_the_patches(reg_tokens):
    vit = _tiny_vit(reg_tokens=reg_tokens)
    attn = vit.blocks[-1].attn
    fused_before = attn.fused_attn
    seen = []
    handle = attn.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = cls_attention(vit, pixels)
    handle.remove()

    assert maps.shape == (2, 3, 4, 4)  # (N, heads, h, w): 3 heads, 32 / 8 patches a side
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(2, 3), atol=1e-6)
    assert attn.fused_attn == fused_before  # timm's switch is put back
    # By hand, from the block's own input: softmax(q·kᵀ/√d) of the CLS query, patch keys only.
    x = seen[-1]
    n, t, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    probs = ((q @ k.transpose(-2, -1)) * attn.head_dim**-0.5).softmax(-1)
    row = probs[:, :, 0, 1 + reg_tokens :]
    expected = (row / row.sum(-1, keepdim=True)).reshape(2, 3, 4, 4)
    assert torch.allclose(maps, expected, atol=1e-6)


def test_patch_features_of_a_vit_and_a_cnn():
    vit = _tiny_vit()
    pixels = torch.randn(2, 3, 32, 32)
    feats = patch_features(vit, pixels)
    tokens = vit.forward_features(pixels)
    assert feats.shape == (2, 4, 4, 192)
    assert torch.equal(feats[1, 2, 3], tokens[1, 1 + 2 * 4 + 3])  # row-major after the CLS token
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    assert patch_features(cnn, torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, 512)
    with pytest.raises(ConfigError, match="no CLS-token attention"):
        cls_attention(cnn, torch.randn(1, 3, 64, 64))


def test_a_backbone_without_a_spatial_map_is_refused_in_words():
    class Pooled(torch.nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    with pytest.raises(ConfigError, match=r"no spatial map .* Visualize a VisionTransformer"):
        patch_features(Pooled(), torch.randn(1, 3, 8, 8))


def test_score_iou_of_attention_on_exactly_the_true_patches():
    """Attention spread over exactly the shape's patches: with all of its mass kept the mask is
    the shape, IoU 1; the trivial masks score what their geometry gives."""
    truth = np.zeros((2, 8, 8), bool)
    truth[0, :4, :4] = True  # patches (0, 0) of a 2 × 2 grid of 4 px patches
    truth[1, 4:, :] = True  # the bottom row of patches
    grid = torch.from_numpy(truth[:, ::4, ::4].astype(np.float32))
    heads = torch.stack([grid, torch.ones_like(grid)], 1)  # head 1 attends everywhere
    report = score_iou(grid, heads, truth, threshold=1.0)
    assert report.attention == 1.0
    assert report.heads == [1.0, pytest.approx((0.25 + 0.5) / 2)]
    assert report.all_foreground == pytest.approx((0.25 + 0.5) / 2)
    assert report.true_area == pytest.approx(0.375)


# --- the synthetic source's masks -------------------------------------------------------------

# sha256 of the pixels synthetic_image gave before the mask shared its drawing code.
PIXELS_BEFORE_THE_MASKS = {
    (0, 0, 64, 10): "c9eb77cc78995ee84fc89a90806e38c90359e317508dec6b9fdd94022feb4a48",
    (1, 0, 64, 10): "4b094c4eb24540287d9dc15b3b06b270b59e57c051feaf96b41290b51f2f6890",
    (2, 0, 64, 10): "ce6324cc467551e440521c00e54b328b512e075ab1b40cac622fc6778c75da27",
    (3, 0, 64, 10): "525177d1e428338fb1dfd68439b9f717676361889adb28e2a3fe287a67c714ba",
    (4, 0, 64, 10): "09249ba67e2b07e70526a6de5dad44e223b5976f95d96d9738f58ffd56c0d366",
    (7, 3, 32, 40): "403f4ab85ebbaee46b60fabf8b957777129550d71b0c6cbdbda0ef2f01c5b218",
    (123, 1, 96, 25): "2c23e7e80c9babaf81b330d7d97ffd3532e34156d25397aea3b99ffd25a7e24c",
    (9, 5, 224, 10): "18d8f516ac9e00ed17d4915d5ee8a5cb27bf7ed6882e2b94672797ee6c948113",
}


@pytest.mark.parametrize("args", list(PIXELS_BEFORE_THE_MASKS), ids=str)
def test_synthetic_images_are_bit_identical_to_before_the_masks(args):
    pixels = np.asarray(synthetic_image(*args)).tobytes()
    assert hashlib.sha256(pixels).hexdigest() == PIXELS_BEFORE_THE_MASKS[args]


@pytest.mark.parametrize("size", [32, 64])
def test_synthetic_mask_is_exactly_the_drawn_shape(size):
    """The shape's colours (body and outline) each hold a 0 and a 255 channel; the stripes'
    never do (dark < 110, light >= 145). So a pixel is foreground exactly where it has both."""
    for i in range(2 * len(SHAPES)):  # every shape, twice
        pixels = np.asarray(synthetic_image(i, 3, size, 10)).astype(int)
        mask = synthetic_mask(i, 3, size, 10)
        assert mask.shape == (size, size) and mask.dtype == bool
        drawn = (pixels == 0).any(-1) & (pixels == 255).any(-1)
        assert 0.02 < mask.mean() < 0.5, (i, mask.mean())
        assert np.array_equal(mask, drawn), i


# --- the command, on a small checkpoint (no Ray) ----------------------------------------------


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    from export_helpers import _trained_checkpoint

    path, _ = _trained_checkpoint(tmp_path_factory.mktemp("vit"), "vit_tiny_patch16_224")
    return path  # a checkpoint directory (a run directory is registered by Ray Train)


def test_visualize_draws_attention_and_pca_and_scores_iou(vit_run, tmp_path, capsys):
    out = tmp_path / "maps"
    args = ["visualize", str(vit_run), "--data", "synthetic:val", "--out", str(out)]
    assert main([*args, "--samples", "2", "--iou", "--iou_samples", "12"]) == 0
    printed = capsys.readouterr().out
    assert "vit_tiny_patch16_224 (trained), 2 images of synthetic:val at 32 px, 2x2" in printed
    assert "attention, mean of heads" in printed and "centred disc" in printed
    for name in ("attention.png", "pca.png", "iou.json"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" or name.endswith("json")
        assert str(out / name) in printed
    report = json.loads((out / "iou.json").read_text())
    assert report["iou"]["images"] == 12 and len(report["iou"]["heads"]) == 3
    assert 0 <= report["iou"]["attention"] <= 1 and report["weights"] == "trained"

    assert main([*args, "--samples", "1", "--random_init"]) == 0
    assert "(random init)" in capsys.readouterr().out


def test_visualize_refuses_iou_without_true_masks_before_loading(tmp_path, capsys):
    args = ["visualize", str(tmp_path / "nothing"), "--data", "digits", "--out", str(tmp_path)]
    assert main([*args, "--iou"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--iou needs true masks" in err and "synthetic:val" in err


def test_visualize_of_a_cnn_draws_pca_only_and_refuses_iou(tmp_path, capsys):
    from export_helpers import _trained_checkpoint

    ckpt, _ = _trained_checkpoint(tmp_path, "resnet18")
    out = tmp_path / "maps"
    args = ["visualize", str(ckpt), "--data", "synthetic", "--out", str(out), "--samples", "2"]
    assert main(args) == 0
    assert "PCA map only" in capsys.readouterr().out
    assert (out / "pca.png").exists() and not (out / "attention.png").exists()
    assert main([*args, "--iou"]) == 2
    assert "has none" in capsys.readouterr().err
