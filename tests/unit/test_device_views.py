"""lejepa_ray.data.device_views: the photometric ops on tensors against the CPU path (PIL,
itself byte-equal to torchvision's), op by op with fixed parameters and for whole views drawn
by the same seeded generator; shapes, dtypes and the batch plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from images import photo

from lejepa_ray.data import device_views, views
from lejepa_ray.data.config import ViewConfig
from lejepa_ray.data.decode import decode_rgb
from lejepa_ray.data.views import PARAM_FIELDS, Jitter, ViewMaker, ViewParams

BOX, SIZE = (10, 7, 110, 81), 48


def _cpu(img, p: ViewParams) -> np.ndarray:
    out = np.empty((3, SIZE, SIZE), dtype=np.uint8)
    views.render(img, p, SIZE, 128, out)
    return out.astype(np.float32)


def _device(img, p: ViewParams) -> np.ndarray:
    crop = np.empty((3, SIZE, SIZE), dtype=np.uint8)
    views.render(img, p, SIZE, 128, crop, photometric=False)
    row = np.empty(len(PARAM_FIELDS), np.float32)
    p.encode(row)
    out = device_views.augment(
        torch.from_numpy(crop)[None], torch.from_numpy(row)[None], ViewConfig()
    )
    assert out.dtype == torch.float32 and out.shape == (1, 3, SIZE, SIZE)
    return out[0].numpy()


def _jitter(order=(0, 1, 2, 3), b=None, c=None, s=None, h=None) -> Jitter:
    return Jitter(order, b, c, s, h)


# (name, parameters, tolerated mean |difference|, tolerated 99th percentile), in 0-255 levels.
# The CPU path rounds to uint8 after every op (PIL), this one does not; hue goes through PIL's
# 8-bit HSV on the CPU side, and blur is PIL's box approximation of the Gaussian.
OPS = [
    ("brightness", ViewParams(BOX, _jitter(b=1.3), False, None, False, False), 0.6, 1.5),
    ("brightness dark", ViewParams(BOX, _jitter(b=0.6), False, None, False, False), 0.6, 1.5),
    ("contrast", ViewParams(BOX, _jitter(c=1.35), False, None, False, False), 0.6, 1.5),
    ("saturation", ViewParams(BOX, _jitter(s=0.7), False, None, False, False), 0.6, 1.5),
    ("hue", ViewParams(BOX, _jitter(h=-0.08), False, None, False, False), 0.5, 3.0),
    (
        "all four",
        ViewParams(BOX, _jitter((2, 0, 3, 1), 1.2, 0.75, 1.15, 0.05), False, None, False, False),
        2.0,
        8.0,
    ),
    ("grayscale", ViewParams(BOX, None, True, None, False, False), 0.6, 1.5),
    ("blur", ViewParams(BOX, None, False, 1.3, False, False), 1.0, 4.0),
    ("blur small", ViewParams(BOX, None, False, 0.3, False, False), 1.0, 4.0),
    ("solarize", ViewParams(BOX, None, False, None, True, False), 0.0, 0.0),
    ("flip", ViewParams(BOX, None, False, None, False, True), 0.0, 0.0),
    (
        "everything",
        ViewParams(BOX, _jitter((3, 1, 0, 2), 0.8, 1.2, 1.3, -0.1), True, 1.1, True, True),
        2.0,
        8.0,
    ),
]


@pytest.mark.parametrize(("name", "p", "mean_tol", "p99_tol"), OPS, ids=[o[0] for o in OPS])
def test_each_op_matches_the_cpu_path_for_fixed_parameters(name, p, mean_tol, p99_tol):
    img = decode_rgb(photo(120, 90, seed=2))
    diff = np.abs(_device(img, p) - _cpu(img, p))
    assert diff.mean() <= mean_tol and np.percentile(diff, 99) <= p99_tol, (
        name,
        diff.mean(),
        np.percentile(diff, 99),
    )


def test_no_op_leaves_the_crop_as_it_is():
    img = decode_rgb(photo(120, 90, seed=2))
    plain = ViewParams(BOX, None, False, None, False, False)
    assert np.array_equal(_device(img, plain), _cpu(img, plain))


def test_the_parameters_shipped_are_the_cpu_paths_draws():
    cfg = ViewConfig(global_views=2, global_size=32, local_views=3, local_size=16)
    images = [photo(64, 48, seed=s) for s in range(4)]
    keys = ["a", "b", "c", "d"]
    crops = ViewMaker(cfg, seed=5, photometric=False).batch(images, keys, epoch=2)
    assert crops.global_params.shape == (4, 2, len(PARAM_FIELDS))
    assert crops.local_params.shape == (4, 3, len(PARAM_FIELDS))
    full = ViewMaker(cfg, seed=5)
    row = np.empty(len(PARAM_FIELDS), np.float32)
    for i, (data, key) in enumerate(zip(images, keys, strict=True)):
        drawn = full.params(decode_rgb(data), key, 2)
        shipped = np.concatenate([crops.global_params[i], crops.local_params[i]])
        for p, got in zip(drawn, shipped, strict=True):
            p.encode(row)
            np.testing.assert_array_equal(got, row)
    assert full.batch(images, keys, epoch=2).global_params is None  # the CPU path ships none


@pytest.mark.parametrize("recipe", [{}, {"jitter_p": 1.0, "blur_p": 1.0, "solarize_p": 1.0}])
def test_whole_views_match_the_cpu_path(recipe):
    cfg = ViewConfig(global_views=2, global_size=64, local_views=4, local_size=32, **recipe)
    images = [photo(200, 150, seed=s) for s in range(6)]
    keys = [f"k{i}" for i in range(6)]
    cpu = ViewMaker(cfg, seed=1).batch(images, keys, epoch=0)
    crops = ViewMaker(cfg, seed=1, photometric=False).batch(images, keys, epoch=0)
    batch = {
        "global": torch.from_numpy(crops.global_views),
        "local": torch.from_numpy(crops.local_views),
        "global_params": torch.from_numpy(crops.global_params),
        "local_params": torch.from_numpy(crops.local_params),
        "label": torch.arange(6),
    }
    out = device_views.augment_batch(batch, cfg)
    assert set(out) == {"global", "local", "label"}
    for name, ref in (("global", cpu.global_views), ("local", cpu.local_views)):
        assert out[name].shape == ref.shape and out[name].dtype == torch.float32
        diff = np.abs(out[name].numpy() - ref.astype(np.float32))
        assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12, (name, diff.mean())
    # Deterministic: the same batch gives the same floats.
    again = device_views.augment_batch(batch, cfg)
    assert torch.equal(out["global"], again["global"])


def test_a_batch_without_parameters_passes_through():
    batch = {"global": torch.zeros(2, 2, 3, 8, 8, dtype=torch.uint8)}
    assert device_views.augment_batch(batch, ViewConfig()) is batch


def test_mismatched_parameters_are_refused():
    with pytest.raises(ValueError, match="expected \\(2, 13\\)"):
        device_views.augment(torch.zeros(2, 3, 8, 8), torch.zeros(3, 13), ViewConfig())
