"""Probes: kNN votes, the bank/query protocols, raw pixels, and the report."""

from __future__ import annotations

from dataclasses import replace

import torch

from lejepa_ray.config import ProbeConfig
from lejepa_ray.data.config import DataConfig
from lejepa_ray.evaluation.probe import (
    HASH_SPLIT,
    TRAIN_VAL,
    LabelledImages,
    knn_accuracy,
    load_labelled,
    probe_report,
    raw_pixels,
)


def test_separable_features_are_classified_perfectly_and_noise_is_at_chance():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1)
    feats = torch.nn.functional.normalize(
        centres[labels] + 0.05 * torch.randn(400, 16, generator=gen), dim=1
    )
    is_query = torch.arange(400) % 5 == 0
    assert knn_accuracy(feats, labels, is_query, k=20) == 1.0
    noise = torch.nn.functional.normalize(torch.randn(400, 16, generator=gen), dim=1)
    assert abs(knn_accuracy(noise, labels, is_query, k=20) - 0.25) < 0.15


def test_votes_are_weighted_by_similarity():
    # One very close neighbour of class 1 outweighs two distant ones of class 0.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    query = torch.nn.functional.normalize(torch.tensor([[1.0, 0.3]]), dim=1)
    feats = torch.cat([bank, query])
    labels = torch.tensor([1, 0, 0, 1])
    is_query = torch.tensor([False, False, False, True])
    assert knn_accuracy(feats, labels, is_query, k=3, temperature=0.07) == 1.0


def test_digits_are_loaded_and_split_80_20():
    data = load_labelled(DataConfig(source="digits", image_size=16), size=24, max_samples=1000)
    assert data.images.shape[1:] == (3, 24, 24) and data.images.dtype == torch.uint8
    assert len(data.images) == len(data.labels) == 1000
    assert set(data.labels.tolist()) == set(range(10))
    assert 0.15 < data.is_query.float().mean() < 0.25


def test_train_val_protocol_fits_on_one_split_and_scores_on_the_other():
    train = DataConfig(source="digits", image_size=16, split="train")
    data = load_labelled(train, 16, 5000, replace(train, split="val"))
    assert data.protocol == TRAIN_VAL
    assert data.bank_size + data.query_size == 1797 and 300 < data.query_size < 420
    hashed = load_labelled(train, 16, 5000)
    assert hashed.protocol == HASH_SPLIT and hashed.bank_size + hashed.query_size < 1500


def test_raw_pixels_are_standardized_with_the_bank_only():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[1] = 10
    images[3] = 255  # a query far off the bank's range must not shift the statistics
    data = LabelledImages(
        images, torch.tensor([0, 1, 0, 1]), torch.tensor([False, False, True, True])
    )
    x = raw_pixels(data)
    assert x.shape == (4, 12) and torch.allclose(x.norm(dim=1), torch.ones(4))
    assert torch.allclose(x[0], -x[1])  # the bank's two images sit either side of its mean


def test_report_puts_the_backbone_beside_its_baselines():
    data = load_labelled(DataConfig(source="digits", image_size=16), 16, 400)

    class Pixels(torch.nn.Module):  # a "backbone" that returns its raw pixels
        def features(self, images):
            return images.flatten(1).float()

    report = probe_report(Pixels(), data, ProbeConfig(), init=Pixels())
    assert report.protocol == HASH_SPLIT and report.bank + report.queries == 400
    assert [name for name, _ in report.rows()] == ["trained backbone", "random init", "raw pixels"]
    assert report.raw.knn_top1 > 0.85 and report.raw.linear_top1 > 0.85
    assert report.trained.knn_top1 == report.init.knn_top1
    table = report.table().splitlines()
    assert "hash 80/20" in table[0] and "kNN top-1" in table[1] and len(table) == 5
    no_extras = probe_report(Pixels(), data, ProbeConfig(linear=False, baseline=False))
    assert no_extras.raw is None and no_extras.trained.linear_top1 is None
