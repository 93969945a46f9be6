"""Probes: kNN votes, the bank/query protocols, raw pixels, and the report."""

from __future__ import annotations

from dataclasses import replace

import torch

from lejepa_ray.config import ProbeConfig
from lejepa_ray.data.config import DataConfig
from lejepa_ray.evaluation.probe import (
    HASH_SPLIT,
    PREPARATION,
    TRAIN_VAL,
    LabelledImages,
    knn_accuracy,
    load_labelled,
    probe_report,
    raw_pixels,
    score,
    standardize,
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


def test_every_feature_set_is_standardized_with_the_bank_only():
    features = torch.zeros(4, 3)
    features[1] = 10
    features[3] = 255  # a query far off the bank's range must not shift the statistics
    features[:, 2] = 7  # constant over the bank: centred, not divided by 0
    is_query = torch.tensor([False, False, True, True])
    x = standardize(features, is_query)
    assert torch.allclose(x[0, :2], -x[1, :2])  # the bank's two rows sit either side of its mean
    assert torch.allclose(x[:2, :2].std(0), torch.ones(2))
    assert torch.equal(x[:, 2], torch.zeros(4)) and x[3, 0] > 10


def test_a_probe_is_blind_to_a_dimensions_scale_and_offset():
    # The like-with-like rule: a few dimensions blown up (as raw pixels' or a backbone's can be)
    # must not drown the others, for any feature set.
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    informative = torch.nn.functional.one_hot(labels, 4).float() + 0.3 * torch.randn(
        400, 4, generator=gen
    )
    loud_noise = 1000 * torch.randn(400, 8, generator=gen) + 50
    feats = torch.cat([informative, loud_noise], dim=1)
    data = LabelledImages(
        torch.zeros(400, 3, 1, 1, dtype=torch.uint8), labels, torch.arange(400) % 5 == 0
    )
    scores = score(feats, data, ProbeConfig())
    assert scores.knn_top1 > 0.9 and scores.linear_top1 > 0.9
    # Without the preparation the loud dimensions decide the neighbours.
    assert knn_accuracy(feats, labels, data.is_query) < 0.6
    assert raw_pixels(data).shape == (400, 3)


def test_report_puts_the_backbone_beside_its_baselines():
    data = load_labelled(DataConfig(source="digits", image_size=16), 16, 400)

    class Pixels(torch.nn.Module):  # a "backbone" that returns its raw pixels
        def features(self, images):
            return images.flatten(1).float()

    report = probe_report(Pixels(), data, ProbeConfig(), init=Pixels())
    assert report.protocol == HASH_SPLIT and report.bank + report.queries == 400
    assert report.to_dict()["preparation"] == PREPARATION
    assert [name for name, _ in report.rows()] == ["trained backbone", "random init", "raw pixels"]
    assert report.raw.knn_top1 > 0.85 and report.raw.linear_top1 > 0.85
    assert report.trained.knn_top1 == report.init.knn_top1
    table = report.table().splitlines()
    assert "hash 80/20" in table[0] and "kNN top-1" in table[1] and len(table) == 5
    no_extras = probe_report(Pixels(), data, ProbeConfig(linear=False, baseline=False))
    assert no_extras.raw is None and no_extras.trained.linear_top1 is None
