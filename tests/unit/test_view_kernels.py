"""lejepa_ray.data.view_kernels (``data.views.kernels=fast``) against the PIL reference
(``views.render``, itself byte-equal to torchvision's pipeline): op by op for fixed parameters,
whole views for the same seeded draws, determinism, and that the Ray-free modules that import
``views`` do not need OpenCV.

Multi-process, Ray and slow tests: ``tests/integration/test_view_kernels.py``."""

from __future__ import annotations

import numpy as np
import pytest
from images import photo

from lejepa_ray.data import view_kernels, views
from lejepa_ray.data.config import ViewConfig
from lejepa_ray.data.decode import decode_rgb
from lejepa_ray.data.views import Jitter, ViewMaker, ViewParams

BOX = (10, 7, 110, 81)  # 100 × 74 source pixels


def _both(img, p: ViewParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The view by the fast kernels and by the reference, (3, size, size) as float32."""
    fast = np.empty((3, size, size), dtype=np.uint8)
    ref = np.empty_like(fast)
    view_kernels.render(view_kernels.as_tensor(img), p, size, 128, fast)
    views.render(img, p, size, 128, ref)
    return fast.astype(np.float32), ref.astype(np.float32)


def _p(jitter=None, gray=False, sigma=None, solarize=False, flip=False) -> ViewParams:
    return ViewParams(BOX, jitter, gray, sigma, solarize, flip)


def _j(order=(0, 1, 2, 3), b=None, c=None, s=None, h=None) -> Jitter:
    return Jitter(order, b, c, s, h)


# (name, parameters, tolerated mean |difference|, tolerated 99th percentile), 0-255 levels.
# The crop is within a level of PIL's resize; brightness and contrast are the reference's own
# tables; saturation rounds differently by at most a level; the reference's hue goes through
# 8-bit HSV; its blur is a three-box approximation of the Gaussian.
OPS = [
    ("crop, downscaled", _p(), 0.1, 1.0),
    ("brightness", _p(_j(b=1.3)), 0.1, 1.0),
    ("brightness dark", _p(_j(b=0.6)), 0.1, 1.0),
    ("contrast", _p(_j(c=1.35)), 0.1, 1.0),
    ("saturation", _p(_j(s=0.7)), 0.6, 1.0),
    ("hue", _p(_j(h=-0.08)), 0.8, 3.0),
    ("hue far back", _p(_j(h=-0.45)), 0.8, 3.0),  # angles that wrap below 0°
    ("hue far on", _p(_j(h=0.45)), 1.0, 5.0),  # and above 360°
    ("all four", _p(_j((2, 0, 3, 1), 1.2, 0.75, 1.15, 0.05)), 1.0, 4.0),
    ("grayscale", _p(gray=True), 0.1, 1.0),
    ("blur", _p(sigma=1.3), 0.8, 3.0),
    ("blur small", _p(sigma=0.3), 0.8, 3.0),
    ("solarize", _p(solarize=True), 0.1, 1.0),
    ("flip", _p(flip=True), 0.1, 1.0),
    ("everything", _p(_j((3, 1, 0, 2), 0.8, 1.2, 1.3, -0.1), True, 1.1, True, True), 1.0, 4.0),
]


@pytest.mark.parametrize(("name", "p", "mean_tol", "p99_tol"), OPS, ids=[o[0] for o in OPS])
def test_each_op_matches_the_reference_for_fixed_parameters(name, p, mean_tol, p99_tol):
    img = decode_rgb(photo(120, 90, seed=2))
    fast, ref = _both(img, p, 48)
    diff = np.abs(fast - ref)
    assert diff.mean() <= mean_tol and np.percentile(diff, 99) <= p99_tol, (
        name,
        diff.mean(),
        np.percentile(diff, 99),
    )


def test_an_upscaled_crop_matches_the_reference():
    img = decode_rgb(photo(120, 90, seed=3))
    fast, ref = _both(img, _p(), 160)  # 100 × 74 source pixels to 160 × 160
    diff = np.abs(fast - ref)
    assert diff.mean() <= 0.1 and diff.max() <= 1.0


@pytest.mark.parametrize("recipe", [{}, {"jitter_p": 1.0, "blur_p": 1.0, "solarize_p": 1.0}])
def test_whole_views_match_the_reference_for_the_same_draws(recipe):
    cfg = dict(global_views=2, global_size=64, local_views=4, local_size=32, **recipe)
    images = [photo(200, 150, seed=s) for s in range(6)]
    keys = [f"k{i}" for i in range(6)]
    fast = ViewMaker(ViewConfig(**cfg, kernels="fast"), seed=1).batch(images, keys, epoch=0)
    ref = ViewMaker(ViewConfig(**cfg, kernels="pil"), seed=1).batch(images, keys, epoch=0)
    for got, want in ((fast.global_views, ref.global_views), (fast.local_views, ref.local_views)):
        assert got.shape == want.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(np.float32) - want)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (diff.mean(), recipe)
    # The crops alone (augment_on=device) are the same within a level too.
    crops = [
        ViewMaker(ViewConfig(**cfg, kernels=k), seed=1, photometric=False).batch(images, keys, 0)
        for k in ("fast", "pil")
    ]
    assert np.abs(crops[0].global_views.astype(int) - crops[1].global_views).max() <= 1


def test_fast_views_are_deterministic_and_independent_of_batch_position():
    cfg = ViewConfig(global_views=2, global_size=32, local_views=3, local_size=16)
    images = [photo(64, 64, seed=s) for s in range(3)]
    a = ViewMaker(cfg, seed=7).batch(images, ["x", "y", "z"], epoch=3)
    b = ViewMaker(cfg, seed=7).batch(images[::-1], ["z", "y", "x"], epoch=3)
    assert np.array_equal(a.global_views, b.global_views[::-1])
    assert np.array_equal(a.local_views, b.local_views[::-1])


def test_the_source_image_is_not_written():
    img = decode_rgb(photo(120, 90, seed=4))
    source = view_kernels.as_tensor(img)
    before = source.clone()
    out = np.empty((3, 48, 48), dtype=np.uint8)
    p = _p(_j((0, 1, 2, 3), 1.2, 0.8, 1.1, 0.05), True, 1.0, True, True)
    view_kernels.render(source, p, 48, 128, out)
    assert source.equal(before)


@pytest.mark.parametrize("kernels", ["fast", "pil"])
def test_a_view_maker_pickles_for_spawned_workers(kernels):
    # DataLoader workers started by spawn or forkserver receive the maker pickled.
    import pickle

    cfg = ViewConfig(global_size=32, local_views=2, local_size=16, kernels=kernels)
    maker = pickle.loads(pickle.dumps(ViewMaker(cfg, seed=2)))
    want = ViewMaker(cfg, seed=2).batch([photo(64, 48)], ["k"], epoch=0)
    got = maker.batch([photo(64, 48)], ["k"], epoch=0)
    assert np.array_equal(got.global_views, want.global_views)
