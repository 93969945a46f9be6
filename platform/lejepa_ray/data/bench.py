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
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import psutil
import ray
import torch
from ray.data import DataContext
from torch.utils.data import DataLoader, Dataset

from lejepa_ray import compat
from lejepa_ray.data import account
from lejepa_ray.data.config import DataConfig, ViewConfig
from lejepa_ray.data.decode import BadImage, decode_rgb
from lejepa_ray.data.feed import iter_views
from lejepa_ray.data.sources import LocalSource, source_from_arg
from lejepa_ray.data.stream import build_view_stream
from lejepa_ray.data.views import ViewMaker
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


def profile_stages(cfg: DataConfig, samples: int = 128) -> dict[str, float]:
    """Milliseconds per sample spent reading, decoding and making views, on one core of this
    process, with the views' time split by operation (``views.<op>_ms``, see
    :meth:`ViewMaker.profile`; each op's time is averaged over all samples, so it includes
    its probability of firing)."""
    source = LocalSource(cfg)
    maker = ViewMaker.of(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker
    decode_s = views_s = read_s = 0.0
    ops: dict[str, float] = {}
    used = 0
    try:
        for i in range(min(samples, len(source))):
            t0 = time.perf_counter()
            row = source[i]
            t1 = time.perf_counter()
            try:
                img = decode_rgb(row["image"], cfg.max_pixels)
            except BadImage:
                continue
            t2 = time.perf_counter()
            maker.profile(img, row["key"], 0, ops)
            t3 = time.perf_counter()
            read_s, decode_s, views_s = read_s + t1 - t0, decode_s + t2 - t1, views_s + t3 - t2
            used += 1
    finally:
        torch.set_num_threads(threads)
    used = max(used, 1)
    out = {
        "read_ms": 1e3 * read_s / used,
        "decode_ms": 1e3 * decode_s / used,
        "views_ms": 1e3 * views_s / used,
    }
    out.update({f"views.{op}_ms": 1e3 * seconds / used for op, seconds in sorted(ops.items())})
    return out


class _ViewsDataset(Dataset):
    """The DataLoader side: row ``i`` of the source, decoded, as views (None when bad)."""

    def __init__(self, cfg: DataConfig, epoch: int):
        self.source = LocalSource(cfg)
        self.maker = ViewMaker.of(cfg)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        row = self.source[i]
        try:
            img = decode_rgb(row["image"], self.maker.max_pixels)
        except BadImage:
            return None
        glob, loc = self.maker.views_of(img, row["key"], self.epoch)
        return torch.from_numpy(glob), torch.from_numpy(loc), row["label"]


def _collate(items: list) -> dict[str, torch.Tensor]:
    items = [x for x in items if x is not None]
    if not items:
        return {"global": torch.empty(0), "local": torch.empty(0), "label": torch.empty(0)}
    return {
        "global": torch.stack([x[0] for x in items]),
        "local": torch.stack([x[1] for x in items]),
        "label": torch.tensor([x[2] for x in items]),
    }


def _measure(
    epochs: Callable[[int], Iterable[dict]],
    seconds: float,
    max_epochs: int = 3,
    drain_s: float = 0.0,
) -> dict[str, Any]:
    """Steady-state samples per second over about ``seconds`` of streaming.

    Each epoch's start-up (worker or actor start, first batch) is timed apart and left out of
    the rate, on both sides: it is paid once per epoch, which is negligible for a real epoch
    but would dominate a benchmark-sized one. A dataset too small to fill ``seconds`` within
    ``max_epochs`` epochs ends the measurement early (use more samples for a steady state).
    After a measurement cut short, the stream is consumed, uncounted, for ``drain_s`` more
    seconds: the tasks running when it closed then end, and Ray's timeline holds their spans.
    """
    streaming = samples = 0.0
    startups = []
    windows: list[tuple[float, float]] = []  # time.time() spans measured, for the timeline
    epoch = 0
    cpu = CpuAccount()  # over the same windows as the rate
    asked = time.time()
    while streaming < seconds and epoch < max_epochs:
        start, asked = time.perf_counter(), time.time()
        first = None
        batches = iter(epochs(epoch))
        for batch in batches:
            now = time.perf_counter()
            if first is None:
                first = now
                startups.append(first - start)
                cpu.resume()
                opened = time.time()
                continue
            samples += len(batch["global"])
            if streaming + now - first >= seconds:
                break
        cpu.pause()
        if first is not None:
            windows.append((opened, time.time()))
        drain_until = time.perf_counter() + drain_s
        for _ in batches:  # empty when the epoch ended by itself
            if time.perf_counter() > drain_until:
                break
        streaming += (now - first) if first is not None else 0.0
        epoch += 1
    return {
        "samples_per_s": samples / max(streaming, 1e-9),
        "samples": samples,
        "startup_s": sum(startups) / len(startups),
        "epochs": epoch,
        "cpu_ms_per_sample": cpu.per_sample(samples),
        "windows": windows,
        "last_epoch_asked": asked,  # time.time() the last epoch was asked for
    }


class CpuAccount:
    """CPU seconds spent by role during the windows between :meth:`resume` and :meth:`pause`,
    in this process and every process below it: ``consumer`` (this process), ``workers``
    (DataLoader workers and Ray worker processes, the finished ones included through their
    parent's reaped-children times) and ``ray`` (Ray's own services). ``idle`` is what is left
    of ``cores × wall``."""

    _MINE = psutil.Process().cmdline()

    def __init__(self) -> None:
        self.used: Counter = Counter()
        self.wall = 0.0
        self._since: tuple[float, Counter] | None = None

    def resume(self) -> None:
        self._since = (time.perf_counter(), self._sample())

    def pause(self) -> None:
        if self._since is not None:
            t0, before = self._since
            self.wall += time.perf_counter() - t0
            now = self._sample()
            now.subtract(before)
            self.used.update({k: max(0.0, v) for k, v in now.items()})
            self._since = None

    @classmethod
    def _role(cls, proc: psutil.Process) -> str:
        try:
            argv = proc.cmdline()
        except psutil.Error:
            return "workers"
        cmd = " ".join(argv)
        if argv == cls._MINE or "default_worker.py" in cmd:
            return "workers"  # a DataLoader worker (a fork of this process), a Ray worker
        if "ray::" in cmd and "Agent" not in cmd:
            return "workers"  # a Ray worker, named after its task
        return "ray"  # raylet, gcs_server, dashboard, agents, log monitor

    @classmethod
    def _sample(cls) -> Counter:
        me = psutil.Process()
        out: Counter = Counter()
        t = me.cpu_times()
        out["consumer"] += t.user + t.system
        out["workers"] += t.children_user + t.children_system  # exited DataLoader workers
        for child in me.children(recursive=True):
            try:
                c = child.cpu_times()
            except psutil.Error:
                continue
            out[cls._role(child)] += c.user + c.system
            # Processes this one reaped (Ray workers that exited, under the raylet).
            out["workers"] += c.children_user + c.children_system
        return out

    def per_sample(self, samples: float) -> dict[str, float]:
        """Milliseconds of CPU per sample by role, and idle, over ``samples`` samples."""
        n = max(samples, 1)
        per = {k: 1e3 * self.used[k] / n for k in ("workers", "consumer", "ray")}
        cores = psutil.cpu_count() or 1
        per["idle"] = 1e3 * max(0.0, cores * self.wall - sum(self.used.values())) / n
        return per


def bench_dataloader(
    cfg: DataConfig, workers: int, batch_size: int, seconds: float
) -> dict[str, Any]:
    """Samples/s of ``torch.utils.data.DataLoader`` with ``workers`` worker processes."""

    def epochs(epoch: int) -> Iterator[dict]:
        loader = DataLoader(
            _ViewsDataset(cfg, epoch),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            collate_fn=_collate,
            drop_last=True,
            prefetch_factor=2,
            generator=torch.Generator().manual_seed(epoch),
        )
        return iter(loader)

    return {**_measure(epochs, seconds), "unit": "epoch"}


def bench_ray_data(
    cfg: DataConfig, workers: int, batch_size: int, seconds: float, sample_ms: float = 0.0
) -> dict[str, Any]:
    """Samples/s of the Ray Data views stream on ``workers`` CPUs (``data.tasks_per_cpu``
    tasks each), with Ray Data's stage account (``stages``, see :mod:`.account`). The stream
    is the one training reads: one execution (a pass) of many epochs, so a short measurement
    is one pass and pays its start once, like a pass of a real run. ``sample_ms``: one
    worker's time per sample (the profile's), to let the tasks running at the end finish, so
    that the slot account knows them."""
    stream = build_view_stream(replace(cfg, workers=workers))

    def epochs(epoch: int) -> Iterator[dict]:
        return iter_views(stream.dataset, stream.counter, cfg, batch_size, device="cpu")

    # A task makes task_units × transform_batch_size samples: let the ones running at the end
    # of the measurement finish (half again their expected time, at most 30 s).
    task_s = cfg.task_units * cfg.transform_batch_size * sample_ms / 1e3
    result = {**_measure(epochs, seconds, drain_s=min(30.0, 1.5 * task_s)), "unit": "pass"}
    ray.kill(stream.counter)
    summary = stream.dataset.get_stats_summary()  # the last execution: the pass measured
    views = account.operator_account(summary)
    spans = _flushed_spans(views.get("tasks", 0), result["last_epoch_asked"])
    result["stages"] = {
        "views_task": views,
        "slots": account.slot_account(spans, result["windows"]),
    }
    return result


def _flushed_spans(
    last_tasks: float, last_start: float, timeout_s: float = 10.0
) -> list[tuple[str, float, float]]:
    """The views tasks' spans from Ray's task timeline, once it holds the ``last_tasks`` tasks
    (Ray Data's count) of the last execution, those that started at ``last_start``
    (``time.time()``, when the last epoch was asked for) or later: workers send their task
    events every second or so, so the last epoch's may not have arrived yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = account.task_spans(compat.task_timeline())
        if sum(a >= last_start for _, a, _ in spans) >= last_tasks or time.monotonic() > deadline:
            return spans
        time.sleep(1.0)


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
