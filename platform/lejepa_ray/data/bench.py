"""Throughput of the Ray Data views stream against a plain DataLoader doing the same work.

Both sides decode the same encoded images and make the same views with the same code
(``ViewMaker``) and the same number of CPU workers: ``workers`` CPUs of transform tasks for Ray
Data (``data.tasks_per_cpu`` tasks each), ``num_workers`` processes for the DataLoader. A
per-stage profile in this process tells how much of a worker's time goes to decoding and how
much to making crops, which bounds what any pipeline can reach; the gap between that bound and
the measured rate is transfer and overhead.

Where that overhead goes is accounted in CPU time per sample, by process role, over the same
windows as the rates: the workers (decode, views, and for Ray the object-store writes), the
consuming process (batching, collation, conversion to tensors) and, for Ray, its own services
(raylet, GCS, agents). What is left of ``cores × wall time`` was idle.

This module is the command, ``lejepa-ray data bench``: its options, the order of the runs, and
the report with its last JSON line. The timed runs themselves (the profile, each pipeline's
measurement) are :mod:`~lejepa_ray.data.bench_pipelines`; the CPU account by process role is
:mod:`~lejepa_ray.data.bench_cpu`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.data import DataContext

from lejepa_ray import compat
from lejepa_ray.data.bench_pipelines import bench_dataloader, bench_ray_data, profile_stages
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.sources import LocalSource, source_from_arg
from lejepa_ray.errors import BenchError, option


@dataclass
class BenchOptions:
    """Measure multi-view samples/s of the Ray Data stream and of a torch DataLoader making the
    same views with the same number of CPU workers. Prints a profile, the ratio and, last, one
    JSON line."""

    data: str = "synthetic"
    """``synthetic``, ``digits``, an image folder or parquet shards."""
    seconds: float = 30.0
    """Measuring time per pipeline, in seconds."""
    workers: int | None = None
    """CPU workers on each side. None: all cores."""
    batch_size: int = 32
    """Samples per batch."""
    tasks_per_cpu: int = DataConfig.tasks_per_cpu
    """Ray Data transform tasks in flight per CPU worker (``data.tasks_per_cpu``)."""
    task_units: int = DataConfig.task_units
    """Units of ``data.transform_batch_size`` samples each Ray Data views task makes
    (``data.task_units``)."""
    augment_on: str = DataConfig.augment_on
    """Where the photometric ops run (``data.augment_on``): ``cpu``, or ``device``, where both
    sides make crops and parameters only."""
    kernels: str = ViewConfig.kernels
    """What computes the views' pixels (``data.views.kernels``): ``fast`` or ``pil``."""
    num_samples: int | None = None
    """The synthetic count, or a cap on the other sources."""
    image_size: int = 256
    """Side of synthetic and digits images, in px."""
    global_views: int = ViewConfig.global_views
    """Global views per sample (``data.views.global_views``)."""
    global_size: int = ViewConfig.global_size
    """Side of the global views, in px (``data.views.global_size``)."""
    local_views: int = ViewConfig.local_views
    """Local views per sample (``data.views.local_views``)."""
    local_size: int = ViewConfig.local_size
    """Side of the local views, in px (``data.views.local_size``)."""

    def data_config(self) -> DataConfig:
        """The data config both pipelines run (its own checks apply)."""
        source, path = source_from_arg(self.data)
        views = ViewConfig(
            global_size=self.global_size,
            local_size=self.local_size,
            global_views=self.global_views,
            local_views=self.local_views,
            kernels=self.kernels,
        )
        return DataConfig(
            source=source,
            path=path,
            num_samples=self.num_samples,
            image_size=self.image_size,
            augment_on=self.augment_on,
            views=views,
            tasks_per_cpu=self.tasks_per_cpu,
            task_units=self.task_units,
        )


def required_samples(batch_size: int) -> int:
    """The fewest samples :func:`run` can measure with: in each epoch the first batch is
    start-up and not counted, and at least two more batches must be timed."""
    return 3 * batch_size


def ray_data_overhead(loader: dict[str, float], stream: dict[str, float]) -> float:
    """Ray Data's own CPU in ms per sample: what its workers, its consumer and Ray's services
    spend beyond the DataLoader's workers and consumer for the same views (idle cores are not
    CPU spent, and are reported apart)."""
    roles = ("workers", "consumer", "ray")
    return sum(stream[r] for r in roles) - sum(loader[r] for r in roles)


def _rate_line(name: str, measured: dict, bound: float) -> str:
    rate = measured["samples_per_s"]
    return (
        f"{name:<11}: {rate:8.1f} samples/s ({rate / bound:.0%} of the bound; "
        f"start-up {measured['startup_s']:.1f} s per {measured['unit']}, not counted)"
    )


def _stages_report(stages: dict) -> str:
    """The Ray Data stage account as printed lines (see :mod:`lejepa_ray.data.account`)."""
    task, slots = stages["views_task"], stages["slots"]

    def ms(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    if task:
        line = (
            f"wall {ms(task.get('wall_ms'))} (input prep {ms(task.get('input_prep_ms'))}, UDF "
            f"{ms(task.get('udf_ms'))}, output build {ms(task.get('output_build_ms'))}), CPU "
            f"{ms(task.get('cpu_ms'))}, {task.get('tasks', 0):.0f} tasks"
        )
    else:
        line = "n/a (Ray Data's stats name no views operator)"
    busy = ", ".join(f"{k} for {v:.1f} s" for k, v in slots["occupancy_s"].items())
    return (
        "Ray Data's views operator (Dataset.stats() of the last epoch, ms per sample):\n"
        f"  views tasks: {line}\n"
        f"  views tasks executing at once over the {slots['window_s']:.1f} s measured (task "
        f"timeline): {busy or 'n/a (no task events)'}; mean task {ms(slots['task_ms'], 0)} ms, "
        f"mean gap between a worker's tasks {ms(slots['gap_ms'], 0)} ms"
    )


def run(
    cfg: DataConfig,
    *,
    seconds: float = BenchOptions.seconds,
    workers: int | None = BenchOptions.workers,
    batch_size: int = BenchOptions.batch_size,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Benchmark both pipelines; print a report and, last, one JSON line; return that dict.

    Starts a local Ray instance with ``workers`` CPUs unless one is already connected.
    """
    workers = workers or os.cpu_count() or 1
    have, need = len(LocalSource(cfg)), required_samples(batch_size)
    if have < need:
        smaller = f" or {option('batch_size')}={have // 3} or less" if have >= 3 else ""
        raise BenchError(
            f"data bench needs at least {need} samples at {option('batch_size')}={batch_size} "
            "(each epoch's first batch is start-up, not measured, and two more are timed), but "
            f"{cfg.path or cfg.source} has {have}: use a larger dataset{smaller}."
        )
    print_fn(f"Profiling one worker's work per sample ({cfg.source}) ...")
    stages = profile_stages(cfg)
    per_sample = stages["read_ms"] + stages["decode_ms"] + stages["views_ms"]
    bound = workers * 1e3 / per_sample

    print_fn(f"DataLoader, {workers} workers, {seconds:.0f} s ...")
    loader = bench_dataloader(cfg, workers, batch_size, seconds)

    if not ray.is_initialized():
        # `workers` logical CPUs for the transform tasks, as many as the DataLoader has worker
        # processes, plus one spare (logical only: the physical cores are the same), as the
        # figures of docs/data.md were measured.
        ray.init(
            address="local",
            num_cpus=workers + 1,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    DataContext.get_current().enable_progress_bars = False
    print_fn(
        f"Ray Data, {workers} CPUs of transform tasks ({cfg.tasks_per_cpu} per CPU), "
        f"{seconds:.0f} s ..."
    )
    # Ray Data logs each execution's plan and end at INFO: two lines per epoch of noise here.
    with compat.quiet_logger("ray.data", logging.WARNING):
        stream = bench_ray_data(cfg, workers, batch_size, seconds, per_sample)

    for name, measured in (("DataLoader", loader), ("Ray Data", stream)):
        if not measured["samples"]:  # a source that skipped most of its images, say
            raise BenchError(
                f"data bench timed no {name} batch after the start-up batch of each epoch: "
                f"{cfg.path or cfg.source} yields fewer than {need} usable samples."
            )
    ratio = stream["samples_per_s"] / loader["samples_per_s"]
    overhead = ray_data_overhead(loader["cpu_ms_per_sample"], stream["cpu_ms_per_sample"])
    limiter = max(
        ("decode", stages["decode_ms"]),
        ("crops", stages["views_ms"]),
        ("read", stages["read_ms"]),
        key=lambda kv: kv[1],
    )[0]
    v = cfg.views
    ops = ", ".join(
        f"{k.removeprefix('views.').removesuffix('_ms')} {val:.2f}"
        for k, val in stages.items()
        if k.startswith("views.")
    )
    print_fn(
        f"\nviews per sample: {v.global_views}×{v.global_size}px + {v.local_views}×"
        f"{v.local_size}px, kernels={v.kernels}, augment_on={cfg.augment_on}, batch "
        f"{batch_size}, {workers} CPU workers\n"
        f"profile (one core, per sample): read {stages['read_ms']:.2f} ms, decode "
        f"{stages['decode_ms']:.2f} ms, crops+augment {stages['views_ms']:.2f} ms "
        f"-> at most {bound:.1f} samples/s on {workers} workers; {limiter} dominates\n"
        f"views by operation (ms per sample): {ops}\n"
        f"{_rate_line('DataLoader', loader, bound)}\n{_rate_line('Ray Data', stream, bound)}\n"
        f"ratio Ray Data / DataLoader: {ratio:.2f}\n"
        f"Ray Data's own CPU per sample (its processes' CPU beyond the DataLoader's): "
        f"{overhead:.2f} ms\n"
        "CPU ms per sample by process, over the measured windows (DataLoader, Ray Data):\n"
        + "\n".join(
            f"  {label:<40} {loader['cpu_ms_per_sample'][k]:7.2f} "
            f"{stream['cpu_ms_per_sample'][k]:7.2f}"
            for k, label in (
                ("workers", "workers (decode, views, hand-off)"),
                ("consumer", "consumer (batching, collation, tensors)"),
                ("ray", "Ray services (raylet, GCS, agents)"),
                ("idle", "idle cores"),
            )
        )
        + "\n"
        + _stages_report(stream["stages"])
    )
    result = {
        "source": cfg.source,
        "path": cfg.path,
        "workers": workers,
        "batch_size": batch_size,
        "seconds": seconds,
        "views": f"{v.global_views}x{v.global_size}+{v.local_views}x{v.local_size}",
        "ray_data_samples_per_s": round(stream["samples_per_s"], 2),
        "dataloader_samples_per_s": round(loader["samples_per_s"], 2),
        "bound_samples_per_s": round(bound, 2),
        "profile_ms": {k: round(val, 3) for k, val in stages.items()},
        "limited_by": limiter,
        "ratio": round(ratio, 3),
        "overhead_cpu_ms": round(overhead, 2),
        "cpu_ms_per_sample": {
            "dataloader": {k: round(v, 2) for k, v in loader["cpu_ms_per_sample"].items()},
            "ray_data": {k: round(v, 2) for k, v in stream["cpu_ms_per_sample"].items()},
        },
        "augment_on": cfg.augment_on,
        "kernels": v.kernels,
        "tasks_per_cpu": cfg.tasks_per_cpu,
        "ray_data_stages": stream["stages"],
    }
    print_fn(json.dumps(result))
    return result
