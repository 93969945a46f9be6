"""Per-op cost of making one sample's views: torchvision's v2 pipeline against ViewMaker, on
the CPU path (``data.augment_on=cpu``) and with the photometric ops left to the training device
(``data.augment_on=device``).

All make the default views (2 × 224 px + 8 × 96 px) of the same JPEGs (500×375 by default,
generated) on one thread, with the same seed per sample, so they draw the same parameters and
(tested in tests/test_views.py) the first two give the same bytes. Per op, milliseconds per
sample averaged over the samples, so an op's figure includes its probability of firing.
``total`` is timed without the per-op clock, the median of ``--repeats`` passes. The device
side (``data.device_views``) is timed here on CPU tensors, one thread, in batches of 16
samples: what it costs a CPU-only trainer per sample.

Prints a markdown table, then one JSON line.

    python benchmarks/views.py [--samples 60] [--repeats 3] [--width 500 --height 375]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from lejepa_ray.data import device_views
from lejepa_ray.data.config import ViewConfig
from lejepa_ray.data.decode import decode_rgb
from lejepa_ray.data.keys import stable_hash
from lejepa_ray.data.views import ViewMaker


class PILBlur(v2.Transform):
    """Gaussian blur with σ drawn uniformly from ``sigma``, by PIL (the recipe's blur)."""

    _transformed_types = (Image.Image,)

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs: list) -> dict:
        return {"sigma": torch.empty(1).uniform_(*self.sigma).item()}

    def transform(self, inpt: Image.Image, params: dict) -> Image.Image:
        return inpt.filter(ImageFilter.GaussianBlur(radius=params["sigma"]))


def torchvision_recipe(
    cfg: ViewConfig, size: int, scale: tuple[float, float]
) -> list[tuple[str, v2.Transform]]:
    """The view recipe as torchvision v2 transforms on PIL images, the reference, as (op name,
    transform) in order. Ops that can never fire are left out, as the views made with
    torchvision always did (so they draw nothing)."""
    steps = [
        (
            "crop_resize",
            v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(cfg.ratio), antialias=True),
        )
    ]
    if cfg.jitter_p > 0 and any(cfg.jitter):
        steps.append(("jitter", v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p)))
    if cfg.grayscale_p > 0:
        steps.append(("grayscale", v2.RandomGrayscale(p=cfg.grayscale_p)))
    if cfg.blur_p > 0:
        steps.append(("blur", v2.RandomApply([PILBlur(cfg.blur_sigma)], p=cfg.blur_p)))
    if cfg.solarize_p > 0:
        steps.append(
            ("solarize", v2.RandomSolarize(threshold=cfg.solarize_threshold, p=cfg.solarize_p))
        )
    if cfg.flip_p > 0:
        steps.append(("flip", v2.RandomHorizontalFlip(p=cfg.flip_p)))
    return steps


def torchvision_views(
    cfg: ViewConfig, img: Image.Image, seed: int, epoch: int, key: str, clock: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The views of ``img`` made by the torchvision recipe, seeded as ViewMaker seeds them:
    global (V_g, 3, S_g, S_g) and local (V_l, 3, S_l, S_l) uint8. ``clock`` accumulates the
    seconds per op."""
    torch.manual_seed(stable_hash(seed, epoch, key))
    out = []
    for size, scale, count in (
        (cfg.global_size, cfg.global_scale, cfg.global_views),
        (cfg.local_size, cfg.local_scale, cfg.local_views),
    ):
        steps = torchvision_recipe(cfg, size, scale)
        views = []
        for _ in range(count):
            x = img
            for name, step in steps:
                t = time.perf_counter()
                x = step(x)
                if clock is not None:
                    clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            views.append(np.asarray(x).transpose(2, 0, 1))
            if clock is not None:
                clock["copy"] = clock.get("copy", 0.0) + time.perf_counter() - t
        out.append(np.stack(views) if views else np.empty((0, 3, size, size), np.uint8))
    return out[0], out[1]


def _jpegs(count: int, width: int, height: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):  # smooth content with detail, photo-like for the JPEG coder
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 8, (height, width, 3))
        pixels = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _device_ms(cfg: ViewConfig, maker: ViewMaker, data: list[bytes], batch: int = 16) -> float:
    """Milliseconds per sample of the photometric ops on CPU tensors, in batches."""
    seconds = 0.0
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]
        views = maker.batch(chunk, [str(i + j) for j in range(len(chunk))], 0)
        tensors = {
            "global": torch.from_numpy(views.global_views),
            "local": torch.from_numpy(views.local_views),
            "global_params": torch.from_numpy(views.global_params),
            "local_params": torch.from_numpy(views.local_params),
        }
        t = time.perf_counter()
        device_views.augment_batch(tensors, cfg)
        seconds += time.perf_counter() - t
    return 1e3 * seconds / len(data)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a Ray Data actor
    cfg = ViewConfig()
    data = _jpegs(args.samples, args.width, args.height)
    maker = ViewMaker(cfg)
    crops_only = ViewMaker(cfg, photometric=False)

    def per_op(make) -> dict[str, float]:
        clock: dict[str, float] = {}
        for i, d in enumerate(data):
            t = time.perf_counter()
            img = decode_rgb(d)
            clock["decode"] = clock.get("decode", 0.0) + time.perf_counter() - t
            make(img, str(i), clock)
        return {k: 1e3 * v / len(data) for k, v in clock.items()}

    def total(make) -> float:
        t = time.perf_counter()
        for i, d in enumerate(data):
            make(decode_rgb(d), str(i), None)
        return 1e3 * (time.perf_counter() - t) / len(data)

    def before(img, key, clock):
        torchvision_views(cfg, img, 0, 0, key, clock)

    def with_maker(m: ViewMaker):
        def make(img, key, clock):
            if clock is None:
                m.views_of(img, key, 0)
            else:
                m.profile(img, key, 0, clock)

        return make

    after, crops = with_maker(maker), with_maker(crops_only)
    ops_before, ops_after, ops_crops = per_op(before), per_op(after), per_op(crops)
    totals_before = [total(before) for _ in range(args.repeats)]
    totals_after = [total(after) for _ in range(args.repeats)]
    totals_crops = [total(crops) for _ in range(args.repeats)]
    t_before, t_after = statistics.median(totals_before), statistics.median(totals_after)
    t_crops = statistics.median(totals_crops)
    t_device = statistics.median(_device_ms(cfg, crops_only, data) for _ in range(args.repeats))
    rows = [
        ("decode", "decode", "decode"),
        ("random parameters", None, "draw"),
        ("crop + resize", "crop_resize", "crop_resize"),
        ("colour jitter (p 0.8)", "jitter", "jitter"),
        ("grayscale (p 0.2)", "grayscale", "grayscale"),
        ("blur (p 0.5)", "blur", "blur"),
        ("solarize (p 0.2)", "solarize", "solarize"),
        ("flip (p 0.5) + copy out", ("flip", "copy"), "flip_copy"),
    ]
    print(f"views of {args.samples} {args.width}×{args.height} JPEGs, ms per sample, one thread")
    print(
        "| op | torchvision v2 | ViewMaker, augment_on=cpu | ViewMaker, augment_on=device |"
        "\n|---|---|---|---|"
    )
    for label, old, new in rows:
        if old is None:
            b = "(inside the ops)"
        else:
            b = f"{sum(ops_before.get(k, 0.0) for k in np.atleast_1d(old)):.2f}"
        key = "copy" if new == "flip_copy" else new
        d = f"{ops_crops[key]:.2f}" if key in ops_crops else "(on the device)"
        print(f"| {label} | {b} | {ops_after.get(new, 0.0):.2f} | {d} |")
    print(
        f"| **total** on the data CPUs, without the clock (median of {args.repeats}) | "
        f"**{t_before:.1f}** | **{t_after:.1f}** | **{t_crops:.1f}** |\n"
        f"| photometric ops on the trainer (CPU tensors, one thread) | | | {t_device:.1f} |\n"
        f"Per sample on the data CPUs, ViewMaker is {t_before / t_after:.2f}× cheaper than "
        f"torchvision with augment_on=cpu and {t_before / t_crops:.2f}× with augment_on=device."
    )
    out = {
        "samples": args.samples,
        "image": [args.width, args.height],
        "before_ms": {k: round(v, 3) for k, v in ops_before.items()},
        "after_ms": {k: round(v, 3) for k, v in ops_after.items()},
        "total_before_ms": [round(t, 2) for t in totals_before],
        "total_after_ms": [round(t, 2) for t in totals_after],
        "speedup": round(t_before / t_after, 3),
        "device_cpu_ms": {k: round(v, 3) for k, v in ops_crops.items()},
        "total_device_cpu_ms": [round(t, 2) for t in totals_crops],
        "speedup_device": round(t_before / t_crops, 3),
        "device_ops_on_cpu_ms": round(t_device, 2),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
