"""Per-op cost of making one sample's views: torchvision's v2 pipeline against ViewMaker with
each set of kernels (``data.views.kernels``: ``pil``, the reference, and ``fast``), and with the
photometric ops left to the training device (``data.augment_on=device``).

All make the default views (2 × 224 px + 8 × 96 px) of the same JPEGs (500×375 by default,
generated) on one thread, with the same seed per sample, so they draw the same parameters;
torchvision and ``pil`` give the same bytes (tests/unit/test_views.py), and how far ``fast`` is from
them is printed. Per op, milliseconds per
sample averaged over the samples, so an op's figure includes its probability of firing.
``total`` is timed without the per-op clock, the median of ``--repeats`` passes. The device
side (``data.device_views``) is timed here on CPU tensors, one thread, in batches of 16
samples: what it costs a CPU-only trainer per sample.

Prints a markdown table, then one JSON line.

    python benchmarks/views.py [--samples 60] [--repeats 3] [--width 500 --height 375]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def generated_jpegs(count: int, width: int, height: int) -> list[bytes]:
    """``count`` photo-like JPEGs of ``width`` × ``height`` px (the same on every call)."""
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
    torch.set_num_threads(1)  # as in a Ray Data task
    cfg = ViewConfig()  # kernels=fast, the default
    data = generated_jpegs(args.samples, args.width, args.height)
    makers = {
        "pil": ViewMaker(dataclasses.replace(cfg, kernels="pil")),
        "fast": ViewMaker(cfg),
        "device": ViewMaker(cfg, photometric=False),
    }

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

    def with_maker(m: ViewMaker):
        def make(img, key, clock):
            if clock is None:
                m.views_of(img, key, 0)
            else:
                m.profile(img, key, 0, clock)

        return make

    pipelines = {
        "torchvision": lambda img, key, clock: torchvision_views(cfg, img, 0, 0, key, clock)
    }
    pipelines |= {name: with_maker(m) for name, m in makers.items()}
    ops = {name: per_op(make) for name, make in pipelines.items()}
    totals: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.repeats):  # interleaved, so that a slower minute is shared by all
        for name, make in pipelines.items():
            totals[name].append(total(make))
    median = {name: statistics.median(t) for name, t in totals.items()}
    t_device = statistics.median(
        _device_ms(cfg, makers["device"], data) for _ in range(args.repeats)
    )
    agreement = _agreement(makers["fast"], makers["pil"], data)
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
        "| op | torchvision v2 | ViewMaker, kernels=pil | ViewMaker, kernels=fast "
        "| kernels=fast, augment_on=device |\n|---|---|---|---|---|"
    )
    for label, old, new in rows:
        if old is None:
            b = "(inside the ops)"
        else:
            b = f"{sum(ops['torchvision'].get(k, 0.0) for k in np.atleast_1d(old)):.2f}"
        key = "copy" if new == "flip_copy" else new
        dev = ops["device"]
        d = f"{dev[key]:.2f}" if key in dev else "(on the device)"
        pil, fast = ops["pil"].get(new, 0.0), ops["fast"].get(new, 0.0)
        print(f"| {label} | {b} | {pil:.2f} | {fast:.2f} | {d} |")
    tv = median["torchvision"]
    print(
        f"| **total** on the data CPUs, without the clock (median of {args.repeats}) | "
        f"**{tv:.1f}** | **{median['pil']:.1f}** | **{median['fast']:.1f}** "
        f"| **{median['device']:.1f}** |\n"
        f"| photometric ops on the trainer (CPU tensors, one thread) | | | | {t_device:.1f} |\n"
        f"Per sample on the data CPUs, against torchvision: kernels=pil {tv / median['pil']:.2f}× "
        f"cheaper, kernels=fast {tv / median['fast']:.2f}×, and with augment_on=device "
        f"{tv / median['device']:.2f}×.\n"
        f"kernels=fast against kernels=pil, same draws, every view: mean |difference| "
        f"{agreement['mean']:.2f} levels, 99th percentile {agreement['p99']:.1f}."
    )
    out = {
        "samples": args.samples,
        "image": [args.width, args.height],
        "ops_ms": {n: {k: round(v, 3) for k, v in o.items()} for n, o in ops.items()},
        "total_ms": {n: [round(t, 2) for t in ts] for n, ts in totals.items()},
        "speedup": {n: round(tv / median[n], 3) for n in makers},
        "device_ops_on_cpu_ms": round(t_device, 2),
        "fast_vs_pil_levels": agreement,
    }
    print(json.dumps(out))
    return out


def _agreement(fast: ViewMaker, pil: ViewMaker, data: list[bytes]) -> dict[str, float]:
    """Mean and 99th percentile of |fast - pil| over every pixel of every view, 0-255 levels."""
    diffs = []
    for i, d in enumerate(data):
        img = decode_rgb(d)
        for a, b in zip(fast.views_of(img, str(i), 0), pil.views_of(img, str(i), 0), strict=True):
            diffs.append(np.abs(a.astype(np.int16) - b).ravel())
    flat = np.concatenate(diffs)
    return {"mean": round(float(flat.mean()), 3), "p99": float(np.percentile(flat, 99))}


if __name__ == "__main__":
    main()
