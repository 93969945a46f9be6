"""kNN probe: votes, the bank/query split, and labelled images from a source."""

from __future__ import annotations

import torch

from lejepa_ray.data.config import DataConfig
from lejepa_ray.probe import knn_accuracy, load_labelled


def test_separable_features_are_classified_perfectly_and_noise_is_at_chance():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1)
    feats = torch.nn.functional.normalize(
        centres[labels] + 0.05 * torch.randn(400, 16, generator=gen), dim=1)
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
