"""What each ``lejepa-ray`` command does once its arguments are parsed: call the Python API
(:mod:`lejepa_ray.api`, or the data tools for the ``data`` commands) and print the result for
a person.

A handler takes the :class:`Parsed` options, and the pretrain config of the commands that take
one, that :func:`~lejepa_ray.cli.parser.parse` made, prints, and returns the exit code;
:data:`~lejepa_ray.cli.commands.COMMANDS` names each command's handler. Each handler imports
what it needs (torch, Ray: seconds) when it runs, so that the command list and ``--version``
stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from lejepa_ray.config import PretrainConfig


@dataclass
class Parsed:
    """What a command's handler gets: its options, and the pretrain config if it takes one."""

    options: Any
    config: PretrainConfig | None
    show_config: bool = False
    config_file: str | None = None
    """The ``--config`` file the config started from (None: the defaults or the quickstart)."""


# Distributions whose versions matter when reporting a problem.
_REPORTED = (
    "lejepa-ray",
    "torch",
    "torchvision",
    "ray",
    "timm",
    "accelerate",
    "pyarrow",
    "tensorboard",
    "numpy",
    "jsonargparse",
)


def env(_: Parsed) -> int:
    """Print the versions of the stack and the accelerators torch can see."""
    for name in _REPORTED:
        try:
            print(f"{name:12s} {version(name)}")
        except PackageNotFoundError:
            print(f"{name:12s} not installed")
    # lazy: torch takes seconds to import; only `env` needs it.
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(cuda)) or "none"
    print(f"{'cuda devices':12s} {cuda} ({names})")
    print(f"{'cpu threads':12s} {torch.get_num_threads()}")
    return 0


@contextlib.contextmanager
def _progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, opened at its first
    call: input refused before any work says so without an empty bar."""
    # lazy: tqdm is only for the commands that draw a bar.
    from tqdm import tqdm

    bars: list[tqdm] = []

    def advance(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="img", desc=desc, file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        yield advance
    finally:
        for bar in bars:
            bar.close()


def data_convert(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.data.convert import convert_image_folder, format_summary

    o = parsed.options
    with _progress("convert") as advance:
        summary = convert_image_folder(
            o.src,
            o.dst,
            shard_size_mb=o.shard_size_mb,
            workers=o.workers,
            max_pixels=o.max_pixels,
            progress=advance,
        )
    print(format_summary(summary, o.dst))
    return 0


def data_bench(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.data import bench

    o = parsed.options
    bench.run(o.data_config(), seconds=o.seconds, workers=o.workers, batch_size=o.batch_size)
    return 0


def data_preview(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.data.preview import preview

    assert parsed.config is not None
    print(preview(parsed.options, parsed.config.data).describe())
    return 0


def pretrain(parsed: Parsed) -> int:
    """Pretrain on Ray, probe, and say where everything is."""
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    cfg = parsed.config
    assert cfg is not None
    result = api.pretrain(cfg)
    minutes, seconds = divmod(round(result.train_seconds), 60)
    since = "" if result.resumed_from is None else f" (resumed at step {result.resumed_from})"
    print(f"\ntrained to step {cfg.optim.steps}{since} in {minutes} min {seconds} s")
    if result.probes_during:
        print(during_table(result.probes_during))
    if result.probe is not None:
        print(result.probe.table())
    print(f"TensorBoard: tensorboard --logdir {result.run_dir}/tensorboard")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"config:      {result.run_dir}/config.yaml")
    return 0


def during_table(records: dict[int, dict]) -> str:
    """The probes during training, a line per probed step."""
    lines = ["probes during training (trained backbone, kNN / linear top-1)"]
    for step, r in sorted(records.items()):
        if "error" in r:
            lines.append(f"  step {step:>6}  failed: {r['error']}")
            continue
        linear = r.get("probe/linear_top1")
        cells = f"{r['probe/knn_top1']:.3f} / " + ("-" if linear is None else f"{linear:.3f}")
        lines.append(f"  step {step:>6}  {cells}")
    return "\n".join(lines)


def export(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    # lazy: as above.
    from lejepa_ray.evaluation.export import ONNX_FILE, PROJECTOR_FILE, WEIGHTS_FILE

    result = api.export(parsed.options)
    out = result.out_dir
    print(
        f"exported {result.architecture} ({result.parameters / 1e6:.1f}M parameters) from "
        f"{result.checkpoint} (step {result.step}) to {out}/{WEIGHTS_FILE} + config.json; "
        f"projector: {out}/{PROJECTOR_FILE}"
    )
    print(f"load it: {result.load_line()}")
    if result.onnx_max_abs_diff is not None:
        print(
            f"ONNX: {out}/{ONNX_FILE} (uint8 images (N, 3, S, S) -> features (N, D)); "
            f"onnxruntime matches PyTorch within {result.onnx_max_abs_diff:.1e}"
        )
    return 0


def evaluate(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    result = api.evaluate(parsed.options)
    parts = [
        f"{name} top-1 {value:.3f}"
        for name, value in (
            ("kNN", result.knn_top1),
            ("linear", result.linear_top1),
            ("raw-pixel kNN", result.raw_knn_top1),
            ("raw-pixel linear", result.raw_linear_top1),
        )
        if value is not None
    ]
    scored = (
        f"{result.val_data} ({result.queries} images)"
        if result.val_data
        else (f"{result.queries} hash-split queries")
    )
    of = "" if result.features == "backbone" else " (projector outputs)"
    print(
        f"{', '.join(parts)}{of} at {result.image_size} px: fitted on {result.data} "
        f"({result.bank} images), scored on {scored}, {result.classes} classes"
    )
    print(result.to_json())
    return 0


def embed(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    with _progress("embed") as advance:
        result = api.embed(parsed.options, progress=advance)
    skipped = f" ({result.skipped} did not decode)" if result.skipped else ""
    steady = result.steady_images_per_s
    after = f"; {steady:.1f} images/s once the first batch was out" if steady else ""
    print(
        f"embedded {result.images} images{skipped} at {result.image_size} px into "
        f"{result.dim}-d vectors in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s "
        f"with the actors' start{after}): {result.out}"
    )
    return 0


def visualize(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    result = api.visualize(parsed.options)
    h, w = result.grid
    print(
        f"{result.architecture} ({result.weights}), {result.images} images of {result.data} at "
        f"{result.image_size} px, {h}x{w} patch grid"
    )
    if result.attention_png is None:
        print("no CLS attention (not a ViT with a class token): PCA map only")
    if result.iou is not None:
        print("\n".join(result.iou.lines()))
    for path in result.files:
        print(path)
    return 0


def sweep(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray import api

    opts = dataclasses.replace(parsed.options, config=parsed.config)
    result = api.sweep(opts)
    if result.interrupted:
        return 130
    minutes, seconds = divmod(round(result.seconds), 60)
    print(
        f"\nsweep {'resumed and ' if result.resumed else ''}finished in {minutes} min "
        f"{seconds} s: {len(result.rows)} trials"
    )
    print(f"results: {result.sweep_dir}/results.csv, plot: {result.sweep_dir}/plot.png")
    if result.validation and "rho" in result.validation and result.validation["rho"]:
        print(
            f"validation: {result.sweep_dir}/validation.json, scatter plots: "
            f"{result.sweep_dir}/validation_<metric>.png"
        )
    print(f"TensorBoard of every trial: tensorboard --logdir {result.sweep_dir}/runs")
    return 0


def cluster_check(parsed: Parsed) -> int:
    # lazy: each command imports its own needs; the command list and --version stay fast.
    from lejepa_ray.cluster import check_fits, load_cluster

    o = parsed.options
    assert parsed.config is not None
    fit = check_fits(parsed.config, load_cluster(o.cluster), o.concurrent)
    print(f"{parsed.config_file or 'the default config'} on {o.cluster}: {fit.describe()}")
    return 0
