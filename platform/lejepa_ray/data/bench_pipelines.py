"""The timed runs of ``data bench``: one worker's profile by stage, and the samples/s of a
DataLoader and of the Ray Data views stream, measured the same way.

Both pipelines decode with :func:`~lejepa_ray.data.decode.decode_rgb` and make views with
:class:`~lejepa_ray.data.views.ViewMaker`, so they differ only in how the work is spread and
handed over. :func:`_measure` times either over about ``seconds`` of streaming, each epoch's
start-up apart, with the CPU by process role over the same windows
(:class:`~lejepa_ray.data.bench_cpu.CpuAccount`); the Ray side adds Ray Data's own stage account
(:mod:`~lejepa_ray.data.account`). :mod:`~lejepa_ray.data.bench` runs them in turn and prints
the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import ray
import torch
from torch.utils.data import DataLoader, Dataset

from lejepa_ray import compat
from lejepa_ray.data import account
from lejepa_ray.data.bench_cpu import CpuAccount
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.decode import BadImage, decode_rgb
from lejepa_ray.data.feed import iter_views
from lejepa_ray.data.sources import LocalSource
from lejepa_ray.data.stream import build_view_stream
from lejepa_ray.data.views import ViewMaker


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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
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
    dataset = stream.dataset
    assert dataset is not None  # build_view_stream always makes one

    def epochs(epoch: int) -> Iterator[dict]:
        return iter_views(dataset, stream.counter, cfg, batch_size, device="cpu")

    # A task makes task_units × transform_batch_size samples: let the ones running at the end
    # of the measurement finish (half again their expected time, at most 30 s).
    task_s = cfg.task_units * cfg.transform_batch_size * sample_ms / 1e3
    result = {**_measure(epochs, seconds, drain_s=min(30.0, 1.5 * task_s)), "unit": "pass"}
    ray.kill(stream.counter)
    summary = dataset.get_stats_summary()  # the last execution: the pass measured
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
