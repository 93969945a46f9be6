"""lejepa_ray.data.views and .config: shapes, dtypes, determinism, odd images, bad values, and
agreement with torchvision's transforms (the reference), op by op and for whole views.

Multi-process, Ray and slow tests: ``tests/integration/test_views.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from images import photo
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as F

from lejepa_ray.data import views
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.decode import EMPTY, NOT_AN_IMAGE, decode_rgb
from lejepa_ray.data.views import Jitter, ViewMaker, ViewParams

SMALL = ViewConfig(global_views=2, global_size=32, local_views=3, local_size=16)


def test_default_recipe_shapes_and_dtypes():
    maker = ViewMaker(ViewConfig())
    kept, glob, loc, skipped, *_ = maker.batch(
        [photo(300, 200), photo(120, 90, seed=1)], ["a", "b"], epoch=0
    )
    assert kept.tolist() == [0, 1] and not skipped
    assert glob.shape == (2, 2, 3, 224, 224) and glob.dtype == np.uint8
    assert loc.shape == (2, 8, 3, 96, 96) and loc.dtype == np.uint8
    assert glob.std() > 5  # real image content, not an empty buffer


def test_views_are_a_function_of_seed_epoch_and_key():
    maker = ViewMaker(SMALL, seed=7)
    images = [photo(64, 64, seed=s) for s in range(3)]
    _, g1, l1, _, *_ = maker.batch(images, ["x", "y", "z"], epoch=3)
    # Same sample in another batch position, made by another object: identical views.
    _, g2, l2, _, *_ = ViewMaker(SMALL, seed=7).batch(images[::-1], ["z", "y", "x"], epoch=3)
    assert np.array_equal(g1, g2[::-1]) and np.array_equal(l1, l2[::-1])
    # Another epoch, another seed or another key: different views.
    assert not np.array_equal(g1, maker.batch(images, ["x", "y", "z"], epoch=4)[1])
    assert not np.array_equal(g1, ViewMaker(SMALL, seed=8).batch(images, ["x", "y", "z"], 3)[1])
    assert not np.array_equal(g1[0], maker.batch(images[:1], ["w"], epoch=3)[1][0])
    # The views of one sample differ from each other (each crop draws its own parameters).
    assert not np.array_equal(g1[0, 0], g1[0, 1])


def test_bad_samples_are_dropped_and_counted():
    maker = ViewMaker(SMALL)
    kept, glob, loc, skipped, *_ = maker.batch(
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
    kept, glob, loc, skipped, *_ = ViewMaker(SMALL).batch(
        [photo(width, height, fmt="PNG")], ["k"], 0
    )
    assert kept.tolist() == [0] and not skipped
    assert glob.shape == (1, 2, 3, 32, 32) and loc.shape == (1, 3, 3, 16, 16)


def test_no_local_views():
    _, glob, loc, _, *_ = ViewMaker(ViewConfig(global_size=32, local_views=0)).batch(
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
        ({"kernels": "cuda"}, "views.kernels='cuda' is invalid: expected fast or pil"),
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


def _reference_views(cfg: ViewConfig, img, seed: int, epoch: int, key: str):
    """The reference: torchvision's v2 pipeline (benchmarks/views.py), and the generator's next
    draw after it."""
    from benchmarks_helpers import _load

    glob, local = _load("views").torchvision_views(cfg, img, seed, epoch, key)
    return glob, local, torch.rand(1).item()


RECIPES = {
    "default": {},
    "every op always": {"jitter_p": 1.0, "grayscale_p": 1.0, "blur_p": 1.0, "solarize_p": 1.0},
    "no augmentation": {
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur_p": 0.0,
        "solarize_p": 0.0,
        "flip_p": 0.0,
    },
    "no hue, no contrast": {"jitter": (0.4, 0.0, 0.2, 0.0), "jitter_p": 1.0},
    "no jitter strength": {"jitter": (0.0, 0.0, 0.0, 0.0)},
}


def test_the_fallback_crop_equals_torchvision_on_extreme_shapes():
    """Strips defeat all ten tries at a crop, so RandomResizedCrop falls back to a central
    crop of the nearest allowed ratio: the same box, draws and bytes as torchvision."""
    cfg = ViewConfig(global_size=32, local_size=16, local_views=2, kernels="pil")
    maker = ViewMaker(cfg, seed=4)
    for i, (w, h) in enumerate([(400, 3), (3, 400), (1, 1), (500, 40)]):
        img = decode_rgb(photo(w, h, seed=i, fmt="PNG"))
        ref_g, ref_l, ref_next = _reference_views(cfg, img, 4, 0, f"s{i}")
        glob, loc = maker.views_of(img, f"s{i}", 0)
        assert torch.rand(1).item() == ref_next, (w, h)
        assert np.array_equal(glob, ref_g) and np.array_equal(loc, ref_l), (w, h)


@pytest.mark.parametrize("overrides", RECIPES.values(), ids=RECIPES.keys())
def test_views_equal_torchvision_drawn_the_same_way(overrides):
    """Same seed -> the same random draws as torchvision's Compose (the generator ends in the
    same state) and, the arithmetic being the same, the same bytes; ops that cannot fire draw
    nothing, as before."""
    cfg = ViewConfig(**overrides, kernels="pil")
    maker = ViewMaker(cfg, seed=3)
    for i in range(3 if overrides else 6):
        img = decode_rgb(photo(500, 375, seed=i))
        ref_g, ref_l, ref_next = _reference_views(cfg, img, 3, 1, f"k{i}")
        glob, loc = maker.views_of(img, f"k{i}", 1)
        assert torch.rand(1).item() == ref_next  # as many draws, in the same order
        assert np.array_equal(glob, ref_g) and np.array_equal(loc, ref_l)


FIXED = [
    ("brightness", Jitter((0, 1, 2, 3), 1.3, None, None, None)),
    ("brightness dark", Jitter((0, 1, 2, 3), 0.6, None, None, None)),
    ("contrast", Jitter((1, 0, 2, 3), None, 1.35, None, None)),
    ("saturation", Jitter((2, 0, 1, 3), None, None, 0.7, None)),
    ("hue", Jitter((3, 0, 1, 2), None, None, None, -0.08)),
    ("all four", Jitter((2, 0, 3, 1), 1.2, 0.75, 1.15, 0.05)),
]


@pytest.mark.parametrize(("name", "jitter"), FIXED, ids=[f[0] for f in FIXED])
def test_color_jitter_equals_torchvision_for_fixed_parameters(name, jitter):
    img = decode_rgb(photo(96, 80, seed=5))
    ref = img
    for op in jitter.order:
        if op == 0 and jitter.brightness is not None:
            ref = F.adjust_brightness(ref, jitter.brightness)
        elif op == 1 and jitter.contrast is not None:
            ref = F.adjust_contrast(ref, jitter.contrast)
        elif op == 2 and jitter.saturation is not None:
            ref = F.adjust_saturation(ref, jitter.saturation)
        elif op == 3 and jitter.hue is not None:
            ref = F.adjust_hue(ref, jitter.hue)
    assert np.array_equal(np.asarray(views.color_jitter(img, jitter)), np.asarray(ref)), name


def test_every_other_op_equals_torchvision_for_fixed_parameters():
    img = decode_rgb(photo(120, 90, seed=2))
    box, size = (10, 7, 110, 81), 48
    plain = ViewParams(box, None, False, None, False, False)

    def ours(p: ViewParams) -> np.ndarray:
        out = np.empty((3, size, size), dtype=np.uint8)
        views.render(img, p, size, 128, out)
        return out.transpose(1, 2, 0)

    crop = F.resized_crop(img, 7, 10, 74, 100, [size, size], antialias=True)
    assert np.array_equal(ours(plain), np.asarray(crop))
    base = ours(plain)  # the other ops, on our crop
    base_img = Image.fromarray(base)
    expect = {
        "grayscale": F.rgb_to_grayscale(base_img, num_output_channels=3),
        "blur": base_img.filter(ImageFilter.GaussianBlur(radius=1.3)),
        "solarize": F.solarize(base_img, 128),
        "flip": F.horizontal_flip(base_img),
    }
    got = {
        "grayscale": ours(ViewParams(box, None, True, None, False, False)),
        "blur": ours(ViewParams(box, None, False, 1.3, False, False)),
        "solarize": ours(ViewParams(box, None, False, None, True, False)),
        "flip": ours(ViewParams(box, None, False, None, False, True)),
    }
    for name, ref in expect.items():
        assert np.array_equal(got[name], np.asarray(ref)), name


def test_parameters_follow_torchvision_distributions():
    """Over many views, crop areas, aspect ratios and the rate of every op are those the
    config asks for (the draws are torchvision's, call for call: tested above)."""
    cfg = ViewConfig()
    maker = ViewMaker(cfg)
    img = Image.new("RGB", (500, 375))
    params = [p for i in range(300) for p in maker.params(img, str(i), 0)[:2]]
    areas = np.array([(p.box[2] - p.box[0]) * (p.box[3] - p.box[1]) for p in params]) / 187500
    ratios = np.array([(p.box[2] - p.box[0]) / (p.box[3] - p.box[1]) for p in params])
    assert areas.min() > 0.29 and areas.max() <= 1.0 and 0.55 < areas.mean() < 0.75
    assert ratios.min() > 0.74 and ratios.max() < 1.34
    rates = {
        "jitter": np.mean([p.jitter is not None for p in params]),
        "grayscale": np.mean([p.grayscale for p in params]),
        "blur": np.mean([p.blur_sigma is not None for p in params]),
        "solarize": np.mean([p.solarize for p in params]),
        "flip": np.mean([p.flip for p in params]),
    }
    expected = {"jitter": 0.8, "grayscale": 0.2, "blur": 0.5, "solarize": 0.2, "flip": 0.5}
    for op, rate in rates.items():  # 600 draws: 4 standard errors at most
        assert abs(rate - expected[op]) < 4 * (expected[op] * (1 - expected[op]) / 600) ** 0.5, op
    b = [p.jitter.brightness for p in params if p.jitter]
    assert min(b) >= 0.6 and max(b) <= 1.4
