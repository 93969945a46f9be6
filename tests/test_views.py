"""lejepa_ray.data.views and .config: shapes, dtypes, determinism, odd images, bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from images import photo

from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.decode import EMPTY, NOT_AN_IMAGE
from lejepa_ray.data.keys import stable_hash
from lejepa_ray.data.views import ViewMaker

SMALL = ViewConfig(global_views=2, global_size=32, local_views=3, local_size=16)


def test_default_recipe_shapes_and_dtypes():
    maker = ViewMaker(ViewConfig())
    kept, glob, loc, skipped = maker.batch(
        [photo(300, 200), photo(120, 90, seed=1)], ["a", "b"], epoch=0
    )
    assert kept.tolist() == [0, 1] and not skipped
    assert glob.shape == (2, 2, 3, 224, 224) and glob.dtype == np.uint8
    assert loc.shape == (2, 8, 3, 96, 96) and loc.dtype == np.uint8
    assert glob.std() > 5  # real image content, not an empty buffer


def test_views_are_a_function_of_seed_epoch_and_key():
    maker = ViewMaker(SMALL, seed=7)
    images = [photo(64, 64, seed=s) for s in range(3)]
    _, g1, l1, _ = maker.batch(images, ["x", "y", "z"], epoch=3)
    # Same sample in another batch position, made by another object: identical views.
    _, g2, l2, _ = ViewMaker(SMALL, seed=7).batch(images[::-1], ["z", "y", "x"], epoch=3)
    assert np.array_equal(g1, g2[::-1]) and np.array_equal(l1, l2[::-1])
    # Another epoch, another seed or another key: different views.
    assert not np.array_equal(g1, maker.batch(images, ["x", "y", "z"], epoch=4)[1])
    assert not np.array_equal(g1, ViewMaker(SMALL, seed=8).batch(images, ["x", "y", "z"], 3)[1])
    assert not np.array_equal(g1[0], maker.batch(images[:1], ["w"], epoch=3)[1][0])
    # The views of one sample differ from each other (each crop draws its own parameters).
    assert not np.array_equal(g1[0, 0], g1[0, 1])


def test_stable_hash_is_fixed_across_processes():
    # Python salts str hashes per process; crops must not depend on which process made them.
    code = "from lejepa_ray.data.keys import stable_hash; print(stable_hash(0, 1, 'a'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert int(other.stdout) == stable_hash(0, 1, "a")
    assert stable_hash(0, 1, "a") != stable_hash(0, 1, "b")
    assert 0 <= stable_hash("anything") < 2**63


def test_bad_samples_are_dropped_and_counted():
    maker = ViewMaker(SMALL)
    kept, glob, loc, skipped = maker.batch(
        [photo(), b"", b"GIF? no, text", photo(seed=2)], ["a", "b", "c", "d"], epoch=0
    )
    assert kept.tolist() == [0, 3]
    assert glob.shape[0] == loc.shape[0] == 2
    assert skipped == {EMPTY: 1, NOT_AN_IMAGE: 1} and skipped.total == 2


@pytest.mark.parametrize(
    ("width", "height"),
    [(5, 4), (1, 3000), (3000, 1), (1, 1)],
    ids=["smaller-than-a-crop", "tall-strip", "wide-strip", "one-pixel"],
)
def test_tiny_and_extreme_images_still_give_full_size_views(width, height):
    kept, glob, loc, skipped = ViewMaker(SMALL).batch([photo(width, height, fmt="PNG")], ["k"], 0)
    assert kept.tolist() == [0] and not skipped
    assert glob.shape == (1, 2, 3, 32, 32) and loc.shape == (1, 3, 3, 16, 16)


def test_no_local_views():
    _, glob, loc, _ = ViewMaker(ViewConfig(global_size=32, local_views=0)).batch(
        [photo()], ["k"], 0
    )
    assert glob.shape == (1, 2, 3, 32, 32) and loc.shape == (1, 0, 3, 96, 96)


def test_augmentation_probabilities_are_honoured():
    # With every augmentation off, a full-scale crop of a square image is just a resize.
    plain = ViewConfig(
        global_views=1,
        global_size=64,
        global_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        local_views=0,
        flip_p=0,
        jitter_p=0,
        grayscale_p=0,
        blur_p=0,
        solarize_p=0,
    )
    a = ViewMaker(plain).batch([photo(64, 64, fmt="PNG")], ["k"], 0)[1]
    b = ViewMaker(plain).batch([photo(64, 64, fmt="PNG")], ["k"], 5)[1]
    assert np.array_equal(a, b)  # nothing random left
    gray = ViewMaker(ViewConfig(**{**plain.__dict__, "grayscale_p": 1.0})).batch(
        [photo(64, 64)], ["k"], 0
    )[1]
    assert np.array_equal(gray[0, 0, 0], gray[0, 0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_views": 0}, "views.global_views=0"),
        ({"local_scale": (0.5, 0.2)}, "views.local_scale"),
        ({"jitter_p": 1.5}, "views.jitter_p=1.5"),
        ({"global_size": 4}, "views.global_size=4"),
        ({"jitter": (0.4, 0.4, 0.2, 0.9)}, "hue strength"),
    ],
)
def test_view_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ViewConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "imagenet"}, "data.source='imagenet' is invalid: expected one of folder"),
        ({"source": "folder"}, "needs data.path"),
        ({"source": "parquet"}, "needs data.path"),
        ({"shuffle": "sometimes"}, "data.shuffle"),
        ({"max_skip_rate": 2.0}, "data.max_skip_rate=2.0"),
        ({"views": {"local_views": -1}}, "views.local_views=-1"),
    ],
)
def test_data_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)
