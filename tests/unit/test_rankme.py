"""RankMe: closed forms (full rank, rank 1, scale and rotation invariance), the held-out batch,
and the metrics of a real encoder in eval mode."""

from __future__ import annotations

import math

import pytest
import torch

from lejepa_ray.data.config import DataConfig
from lejepa_ray.train.rankme import effective_rank, heldout_batch, heldout_data, rankme_metrics


def test_identity_has_full_rank_and_rank_one_has_about_one():
    assert effective_rank(torch.eye(64)) == pytest.approx(64, rel=1e-4)
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(200, 1, generator=gen), torch.randn(1, 32, generator=gen)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-3)
    # Two equal singular values and the rest zero: exactly 2.
    two = torch.zeros(10, 8)
    two[0, 0], two[1, 1] = 3.0, 3.0
    assert effective_rank(two) == pytest.approx(2.0, rel=1e-4)


def test_it_lies_between_one_and_min_n_d_and_ignores_scale_and_rotation():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(100, 16, generator=gen) * torch.linspace(0.1, 3.0, 16)
    r = effective_rank(z)
    assert 1.0 < r < 16.0
    assert effective_rank(1000.0 * z) == pytest.approx(r, rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    assert effective_rank(z.double() @ q) == pytest.approx(r, rel=1e-6)
    # More directions with variance: a higher effective rank.
    assert effective_rank(torch.randn(100, 16, generator=gen)) > r
    assert effective_rank(torch.zeros(5, 3)) == 1.0
    diverged = z.clone()
    diverged[3, 2] = float("nan")
    assert math.isnan(effective_rank(diverged))  # a metric: NaN, never an exception
    with pytest.raises(ValueError, match=r"non-empty \(N, D\) matrix"):
        effective_rank(torch.zeros(4))


def test_the_batch_is_held_out_when_the_run_trains_on_the_train_split():
    data, held_out = heldout_data(DataConfig(source="digits", split="train"))
    assert data.split == "val" and held_out
    data, held_out = heldout_data(DataConfig(source="digits"))
    assert data.split == "all" and not held_out
    a = heldout_batch(DataConfig(source="digits", split="train"), 32, 40)
    b = heldout_batch(DataConfig(source="digits", split="train"), 32, 40)
    assert a.shape == (40, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b)  # fixed: the same images on every call (and every rank)


def test_metrics_of_an_encoder_in_eval_mode_restore_its_mode():
    from lejepa_ray.config import load_config
    from lejepa_ray.model.encoder import LeJEPAEncoder, resolve_backbone

    cfg = load_config(
        None,
        [
            "model.name=resnet10t",
            "model.projector_hidden=64",
            "model.projector_dim=16",
            "data.views.global_size=32",
            "data.views.local_size=16",
        ],
    )
    torch.manual_seed(0)
    encoder = LeJEPAEncoder(resolve_backbone(cfg), cfg.model).train()
    images = heldout_batch(DataConfig(source="digits", split="train"), 32, 64)
    m = rankme_metrics(encoder, images, batch_size=24)  # several batches
    assert encoder.training
    assert set(m) == {"rankme/backbone", "rankme/projector"}
    assert 1.0 <= m["rankme/backbone"] <= min(64, encoder.spec.num_features)
    assert 1.0 <= m["rankme/projector"] <= 16
    with torch.no_grad():
        feats, projs = encoder.eval().embeddings(images)
    assert math.isclose(m["rankme/backbone"], effective_rank(feats), rel_tol=1e-5)
    assert math.isclose(m["rankme/projector"], effective_rank(projs), rel_tol=1e-5)
