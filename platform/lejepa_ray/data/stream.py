"""The Ray Data pipeline of views and the iterator a training loop consumes, epoch after epoch.

Pipeline: the source's plan (``readers.source_plan``: its pieces, each epoch's order of them,
cut into units of ``data.transform_batch_size`` rows) -> ``map_batches`` of one-CPU tasks, each
reading ``data.task_units`` units, decoding each image once and yielding one block of views per
unit -> Ray Train's per-worker shard. Bad samples are dropped inside the tasks and counted in
one small ``SkipCounter`` actor, which the training loop reads to report skips and to stop the
run when too many samples are bad.

One execution of the pipeline (a *pass*) streams many epochs: enough whole epochs to make at
least ``MIN_PASS_UNITS`` units, unless the run takes fewer (:func:`epochs_per_pass`). Every
execution of Ray Data starts with a few seconds in which it runs one task at a time
(docs/data.md, "Where Ray Data's time goes"); a pass pays it once for many small epochs, and a
large epoch pays it once. Ray Data numbers executions; a task takes its pass from that number
and its epoch from the unit, and the crops are seeded by (``data.seed``, epoch, sample), so
epoch ``e`` is the same on every run.

A run resumes where it stopped: :meth:`ViewStream.at` starts the pipeline at an (epoch,
samples) position, and the tasks skip the units and rows before it without reading them.

Pass boundaries cost the trainer little: the views are made by tasks, not an actor pool (an
actor pool is created anew by every execution, each actor a fresh process importing torch),
and :class:`EpochCursor` pulls batches in a background thread, ``data.prefetch_batches`` ahead
of the steps, asking for the next pass as soon as it has pulled the last batch of the current
one.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.data import TaskPoolStrategy
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lejepa_ray.compat import execution_index, set_execution_index
from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.decode import SkipCounts
from lejepa_ray.data.keys import stable_hash
from lejepa_ray.data.plan import Plan
from lejepa_ray.data.readers import Reader, Rows, SourcePlan, source_plan
from lejepa_ray.data.views import ViewMaker
from lejepa_ray.errors import DataQualityError

log = logging.getLogger(__name__)

MIN_PASS_UNITS = 4096
"""A pass holds the fewest whole epochs that make at least this many units (one epoch when an
epoch is larger): 131,072 samples at 32 a unit, a minute or more of a cluster's views."""
PASS_WAVES = 32
"""...and at least this many tasks per views slot: a pass's last tasks run while the other
slots are done, which costs about half a wave, 1.5% of a pass of 32 waves."""
MAX_SLOTS = 256
"""Slots counted at most for the pass length: a pass's unit numbers are made in one process."""


@ray.remote(num_cpus=0)
class SkipCounter:
    """Samples seen and skipped (per reason) by every transform task of one pipeline."""

    def __init__(self) -> None:
        self.seen = 0
        self.skipped = SkipCounts()
        self.by_epoch: dict[int, list[int]] = {}  # epoch -> [seen, skipped]

    def add(self, seen: int, skipped: dict[str, int], epoch: int = 0) -> tuple[int, int]:
        """Count a unit's samples of ``epoch``; returns that epoch's (seen, skipped) so far."""
        self.seen += seen
        self.skipped.update(skipped)
        counts = self.by_epoch.setdefault(epoch, [0, 0])
        counts[0] += seen
        counts[1] += sum(skipped.values())
        return counts[0], counts[1]

    def totals(self) -> dict:
        return {"seen": self.seen, "skipped": dict(self.skipped)}


@dataclass(frozen=True)
class Start:
    """Where a pipeline starts: unit ``unit`` (numbered across epochs, ``plan.Plan.unit``)
    without its first ``offset`` rows."""

    unit: int = 0
    offset: int = 0


def make_views(
    batch: dict[str, np.ndarray],
    plan: Plan,
    reader: Reader,
    cfg: DataConfig,
    units_per_pass: int,
    start: Start,
    counter=None,
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` function: unit numbers within this pass, int64 ``id`` (U,), to blocks of
    views of exactly ``data.transform_batch_size`` rows (the task's last may be short), skipping
    the units and rows before ``start`` unread.

    Output columns: ``global`` uint8 (B, V_g, 3, S_g, S_g), ``local`` uint8 (B, V_l, 3, S_l, S_l)
    (absent when V_l = 0), ``label`` int64 (B,), ``sample_id`` int64 (B,), a stable hash of the
    key, and ``epoch`` int64 (B,). Bad rows are dropped; a unit left short (by them, or as an
    epoch's last unit) waits in a pool until short units make a whole block. With
    ``data.augment_on=device`` the views are plain crops, and ``global_params`` float32
    (B, V_g, P) and ``local_params`` (B, V_l, P) carry what is left to apply
    (``views.PARAM_FIELDS``, P columns).
    """
    # One thread per task: Ray Data scales tasks, not intra-op threads, across cores.
    torch.set_num_threads(1)
    maker = ViewMaker.of(cfg)  # microseconds: nothing to keep between calls
    first = execution_index() * units_per_pass  # this pass's unit 0

    def units() -> Iterator[dict[str, np.ndarray]]:
        for j in batch["id"]:
            g = first + int(j)
            if g < start.unit:
                continue
            epoch, spans = plan.unit(g, skip=start.offset if g == start.unit else 0)
            block, (seen, skipped) = unit_views(reader.read(spans), epoch, maker, cfg, counter)
            if len(block["label"]):
                yield block
            elif seen >= plan.rows_per_epoch and skipped == seen:
                # A whole epoch, every piece of the source, and not one usable image: every
                # task stops, the pass ends at once and the consumer says so, instead of
                # decoding a pass of bad files.
                return

    # Blocks of exactly one unit's rows, whatever an epoch's last unit or a bad image left
    # short: Ray Data would join a short block to the next one, and every later block of the
    # task would straddle two units, which costs the trainer a copy of each (``iter_views``).
    yield from rebatch(units(), cfg.transform_batch_size, cat=np.concatenate, keep_rest=True)


def unit_views(
    rows: Rows, epoch: int, maker: ViewMaker, cfg: DataConfig, counter=None
) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The views of one unit's rows (see :func:`make_views` for the columns), and the
    pipeline's (seen, skipped) totals of ``epoch`` after them ((0, 0) without a counter)."""
    keys = [str(k) for k in rows["key"]]
    views = maker.batch(list(rows["image"]), keys, epoch)
    kept = views.kept
    totals = (0, 0)
    if counter is not None:
        # Waited for (about 1 ms a unit): the counts are in before the block is handed on, so
        # the end-of-pass skip check sees every sample of the pass.
        totals = ray.get(counter.add.remote(len(keys), dict(views.skipped), epoch))
    out = {
        "global": views.global_views,
        "label": np.asarray(rows["label"], dtype=np.int64)[kept],
        "sample_id": np.array([stable_hash(keys[i]) for i in kept], dtype=np.int64),
        "epoch": np.full(len(kept), epoch, dtype=np.int64),
    }
    if cfg.views.local_views:
        out["local"] = views.local_views
    if views.global_params is not None:
        out["global_params"] = views.global_params
        if cfg.views.local_views:
            out["local_params"] = views.local_params
    return out, totals


@dataclass
class ViewStream:
    """A ready pipeline: hand ``dataset`` (or :meth:`at` a position) to the trainer and
    ``counter`` to the training loop."""

    cfg: DataConfig
    plan: Plan
    """The source's pieces and every epoch's order of them."""
    reader: Reader
    counter: ray.actor.ActorHandle
    """The pipeline's ``SkipCounter``; pass it to :func:`iter_epoch` through the loop config."""
    classes: list[str] | None
    """Label names of the source, or None when it is unlabelled."""
    epochs_per_pass: int
    """Epochs one execution of the pipeline streams (:func:`epochs_per_pass`)."""
    progress_bars: bool = False
    """Ray Data's progress bars, as the builder's ``DataContext`` had them: :meth:`at` may run
    in another process (Ray Train's controller), whose context is Ray Data's default."""
    dataset: ray.data.Dataset | None = None
    """Rows of views from the start position given to :func:`build_view_stream`; give it to
    ``TorchTrainer(datasets={"train": ...})``."""

    def at(self, epoch: int = 0, samples: int = 0) -> ray.data.Dataset:
        """The pipeline, starting at row ``samples`` of epoch ``epoch`` (a resume point): the
        units and rows before it are skipped in the tasks, before they are read."""
        unit, offset = self.plan.locate(epoch, samples)
        per_pass = self.epochs_per_pass * self.plan.units_per_epoch
        ids = ray.data.from_items(
            [{"id": j} for j in range(per_pass)],
            override_num_blocks=math.ceil(per_pass / self.cfg.task_units),
        )
        ds = ids.map_batches(
            make_views,
            fn_kwargs={
                "plan": self.plan,
                "reader": self.reader,
                "cfg": self.cfg,
                "units_per_pass": per_pass,
                "start": Start(unit, offset),
                "counter": self.counter,
            },
            batch_size=None,  # a whole block: task_units units
            batch_format="numpy",
            **transform_resources(self.cfg),
        )
        # Ray Data buffers a map's output until a block reaches target_max_block_size (128 MiB
        # by default: ~250 samples of default views, seconds of a task's work). Let every unit
        # flush its own block: the trainer gets a steady stream instead of bursts.
        v = self.cfg.views
        sample_bytes = 3 * (v.global_views * v.global_size**2 + v.local_views * v.local_size**2)
        ds.context.enable_progress_bars = self.progress_bars
        ds.context.target_max_block_size = max(2**20, self.cfg.transform_batch_size * sample_bytes)
        set_execution_index(ds, unit // per_pass)  # the pass holding the start
        return ds


def epochs_per_pass(plan: Plan, cfg: DataConfig, slots: int, run_rows: int | None = None) -> int:
    """The fewest whole epochs of ``plan`` that make at least ``MIN_PASS_UNITS`` units and
    ``PASS_WAVES`` tasks of ``cfg.task_units`` units for each of ``slots`` views tasks, but no
    more than a run that needs ``run_rows`` rows of the stream in all takes, and one spare epoch.

    Ray Data makes a pass's views as fast as it can, whatever the trainer has consumed, and
    finishes the pass after training stops: a pass longer than the run is views made for
    nothing, on CPUs the trainer may share (the quickstart's pass of 90 epochs was 131,580
    samples for a 400-step run that drew 25,600, and its views task took as much CPU as a
    training rank). Epochs are counted as if ``cfg.max_skip_rate`` of every epoch were bad
    images (dropped, and a run with more stops), and the spare epoch covers the end of each
    pass, cut to whole batches. A run that still needs more starts another pass.
    """
    units = max(MIN_PASS_UNITS, PASS_WAVES * slots * cfg.task_units)
    epochs = max(1, math.ceil(units / plan.units_per_epoch))
    usable = plan.rows_per_epoch * (1 - cfg.max_skip_rate)  # rows an epoch delivers, at least
    if run_rows is not None and usable > 0:
        epochs = min(epochs, math.ceil(run_rows / usable) + 1)
    return epochs


def views_slots(cfg: DataConfig) -> int:
    """Views tasks that run at once: ``data.workers × data.tasks_per_cpu``, or when
    ``data.workers`` is None the CPUs the connected cluster has now (those of the nodes that
    declare ``data.node_resource`` when it is set), at most ``MAX_SLOTS``."""
    cpus = cfg.workers
    if not cpus:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if cfg.node_resource:
            nodes = [r for r in nodes if r.get(cfg.node_resource)]
        cpus = int(sum(r.get("CPU", 0) for r in nodes))
    return min(MAX_SLOTS, max(1, cpus * cfg.tasks_per_cpu))


def build_view_stream(
    cfg: DataConfig,
    start_epoch: int = 0,
    start_samples: int = 0,
    pass_epochs: int | None = None,
    listed: SourcePlan | None = None,
    run_rows: int | None = None,
) -> ViewStream:
    """Build the views pipeline of ``cfg`` on the connected Ray cluster.

    Args:
        cfg: source, shuffling, views and bad-input policy.
        start_epoch: the epoch the pipeline starts in (to resume a run mid-way).
        start_samples: the row of that epoch it starts at.
        pass_epochs: epochs per execution (default: :func:`epochs_per_pass`); one execution
            per epoch lets a caller iterate the dataset epoch by epoch.
        listed: the source's plan when the caller has listed it already (``source_plan``).
        run_rows: rows the run takes from the stream from start to end, all ranks and steps,
            read-ahead included; a pass is never much longer (:func:`epochs_per_pass`). None:
            no bound.

    Raises:
        SourceError: the path is missing or holds no images.
    """
    listed = listed or source_plan(cfg)  # fails on a bad source before any task runs
    # On the driver's node: where training nodes come and go (spot pools, elastic groups) an
    # actor on one of them would die with it and take every transform task with it; the
    # driver's node lives as long as the run does.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    counter = SkipCounter.options(scheduling_strategy=here).remote()
    per_pass = pass_epochs or epochs_per_pass(listed.plan, cfg, views_slots(cfg), run_rows)
    stream = ViewStream(
        cfg,
        listed.plan,
        listed.reader,
        counter,
        listed.classes,
        per_pass,
        progress_bars=ray.data.DataContext.get_current().enable_progress_bars,
    )
    stream.dataset = stream.at(start_epoch, start_samples)
    return stream


def transform_resources(cfg: DataConfig) -> dict:
    """``map_batches`` arguments that size and place the views tasks: ``data.workers`` CPUs (all
    Ray Data has when None), each shared by ``data.tasks_per_cpu`` tasks in flight, on the nodes
    that declare ``data.node_resource`` when it is set."""
    size = cfg.workers * cfg.tasks_per_cpu if cfg.workers else None
    return {
        "compute": TaskPoolStrategy(size=size) if size else None,
        "num_cpus": 1 / cfg.tasks_per_cpu,
        **cfg.placement(),  # only on the data nodes, when data.node_resource is set
    }


def data_node_resources(cfg: DataConfig) -> dict[str, float]:
    """What a local Ray instance's one node declares so the views tasks can run on it: one unit
    of ``data.node_resource`` when it is set (else nothing)."""
    return {cfg.node_resource: 1.0} if cfg.node_resource else {}


def iter_epoch(
    counter: ray.actor.ActorHandle,
    cfg: DataConfig,
    batch_size: int,
    *,
    dataset_name: str = "train",
    device: str | torch.device = "auto",
    prefetch_batches: int = 2,
    resumed: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """One pass (one execution: ``ViewStream.epochs_per_pass`` epochs) of this training
    worker's shard, as batches of tensors on ``device``.

    Call it inside a Ray Train loop once per pass; every worker must call it the same number
    of times (the shards are equal). Batches are dicts as made by :func:`make_views`, with
    exactly ``batch_size`` rows (the last partial batch of a pass is dropped so every rank steps
    together). Consume every pass to its end: Ray Data advances its execution counter (which
    names the pass) when a pass completes, so a pass left early is replayed.

    Raises:
        DataQualityError: the skip rate passed ``cfg.max_skip_rate``, or no sample was usable.
    """
    shard = ray.train.get_dataset_shard(dataset_name)
    yield from iter_views(
        shard,
        counter,
        cfg,
        batch_size,
        device=device,
        prefetch_batches=prefetch_batches,
        resumed=resumed,
    )


class EpochCursor:
    """This worker's batches, pass after pass, knowing where in the data the run is.

    ``epoch`` and ``samples`` (drawn in that epoch, over all ranks) go into checkpoints; a
    pipeline started there (:meth:`ViewStream.at`) continues the run without reading what it
    skips. The position advances by ``world_size × batch_size`` rows a step, the same on every
    rank: an epoch of ``rows_per_epoch`` rows ends at the same step everywhere. Rows the stream
    never delivered (bad images, the end of a pass cut to whole batches) leave the count a little
    behind the stream within a pass; at each new pass the count moves up to the pass's first
    epoch. The position counts rows, not which rows: the views tasks run side by side and a
    task holds a short unit back until short units fill a block, so the rows consumed by a
    position are those of its units give or take the tasks in flight, and a resume may repeat
    or miss a few of them.

    With ``prefetch`` > 0 a background thread pulls up to that many batches ahead and requests
    the next pass as soon as the current one is pulled (see the module docstring). ``epoch``
    and ``samples`` still count what the trainer consumed, never what was prefetched.
    ``boundary_waits`` collects (epoch, seconds the trainer waited for its first batch) for
    every pass this cursor entered after its first; the caller reads and clears it.

    Every rank draws ``batch_size`` rows per batch and yields the first ``keep`` (all of them
    by default). A group whose size does not divide the global batch trains some ranks on one
    image fewer (``data.batch_split``); drawing the same count on every rank keeps
    their equal shards in step. ``samples`` counts the rows drawn, left-out ones included: it is
    the position in the epoch's stream, which a group of another size resumes at.
    """

    def __init__(
        self,
        counter: ray.actor.ActorHandle,
        cfg: DataConfig,
        batch_size: int,
        world_size: int,
        rows_per_epoch: int,
        epochs_per_pass: int = 1,
        epoch: int = 0,
        samples: int = 0,
        prefetch: int = 0,
        keep: int | None = None,
    ):
        self.counter, self.cfg, self.batch_size = counter, cfg, batch_size
        self.world_size, self.rows_per_epoch = world_size, rows_per_epoch
        self.epochs_per_pass = epochs_per_pass
        self.keep = batch_size if keep is None else keep
        self.epoch, self.samples = epoch, samples
        self.prefetch = prefetch
        self.boundary_waits: list[tuple[int, float]] = []

    def _start(self) -> tuple[int, int]:
        """Where the pipeline starts: the position, an epoch's end read as the next epoch's
        start (as ``Plan.locate`` reads it)."""
        return divmod(self.epoch * self.rows_per_epoch + self.samples, self.rows_per_epoch)

    def _passes(self) -> Iterator[Iterator[dict[str, torch.Tensor]]]:
        # A pipeline resumed late in a pass may hold less than a batch before the pass ends.
        epoch, samples = self._start()
        resumed = [samples > 0 or epoch % self.epochs_per_pass > 0]

        def one_pass() -> Iterator[dict[str, torch.Tensor]]:
            short, resumed[0] = resumed[0], False
            return iter_epoch(self.counter, self.cfg, self.batch_size, resumed=short)

        if not self.prefetch:
            while True:
                yield one_pass()
        prefetcher = Prefetcher(one_pass, self.prefetch)
        try:
            while True:
                yield prefetcher.epoch()
        finally:
            prefetcher.close()

    def _advance(self, rows: int) -> None:
        """Move the position ``rows`` on. It stays in the epoch of the last row consumed: an
        epoch's last step leaves it at (epoch, rows_per_epoch), which resumes at the next
        epoch's start (``Plan.locate``)."""
        end = self.epoch * self.rows_per_epoch + self.samples + rows
        self.epoch, last = divmod(end - 1, self.rows_per_epoch)
        self.samples = last + 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step_rows = self.batch_size * self.world_size  # drawn by all ranks per step
        first_pass = self._start()[0] // self.epochs_per_pass
        for n, batches in enumerate(self._passes()):
            asked: float | None = time.perf_counter()
            for batch in batches:
                if asked is not None:
                    if n > 0:  # a new pass starts at its first epoch's first row
                        first = (first_pass + n) * self.epochs_per_pass
                        if first > self.epoch:
                            self.epoch, self.samples = first, 0
                        self.boundary_waits.append((self.epoch, time.perf_counter() - asked))
                    asked = None
                self._advance(step_rows)
                if self.keep < self.batch_size:  # views: nothing is copied
                    batch = {name: rows[: self.keep] for name, rows in batch.items()}
                yield batch


class Prefetcher:
    """Epochs of batches pulled by a background thread, at most ``depth`` batches ahead.

    ``epochs()`` is called for each epoch in turn (in the thread); :meth:`epoch` gives the
    next one's batches to the caller. An error in the thread is raised in the caller when it
    reaches that point of the stream. The thread is a daemon: a run that ends mid-epoch leaves
    it blocked, and it ends with the process (after :meth:`close` it stops at its next batch).
    """

    _END = object()

    def __init__(self, epochs: Callable[[], Iterable[dict]], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._pull, args=(epochs,), name="lejepa-data-prefetch", daemon=True
        )
        self._thread.start()

    def _pull(self, epochs: Callable[[], Iterable[dict]]) -> None:
        try:
            while not self._closed.is_set():
                for batch in epochs():
                    self._put(batch)
                    if self._closed.is_set():
                        return
                self._put(self._END)
        except BaseException as e:  # handed to the consumer, traceback and all
            self._put(e)

    def _put(self, item: object) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def epoch(self) -> Iterator[dict]:
        """The batches of the next epoch, as they arrive."""
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop pulling (the thread exits at its next batch or when its put times out)."""
        self._closed.set()


def iter_views(
    iterable,
    counter: ray.actor.ActorHandle,
    cfg: DataConfig,
    batch_size: int,
    *,
    device: str | torch.device = "auto",
    prefetch_batches: int = 2,
    check_every: int = 20,
    resumed: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of a Dataset or DataIterator of views, with the skip-rate policy enforced.
    ``resumed``: the pass started late (a resume), so ending without a batch is no error.

    Without a local shuffle buffer the blocks are taken as the tasks made them and batched by
    :func:`rebatch`: a block of exactly ``batch_size`` rows (``data.transform_batch_size``
    equal to the per-worker batch) reaches the trainer without a copy. Ray Data's own batcher
    copies every row of a batch that straddles two blocks, twice, and one short block (an
    epoch's last unit, a unit with bad images) leaves every later batch of the pass
    straddling (docs/data.md, "Where Ray Data's time goes").
    """
    batches: Iterable
    if cfg.local_shuffle_buffer:
        batches = iterable.iter_torch_batches(
            batch_size=batch_size,
            device=device,
            prefetch_batches=prefetch_batches,
            drop_last=True,
            local_shuffle_buffer_size=cfg.local_shuffle_buffer,
            local_shuffle_seed=cfg.seed,
        )
    else:
        # prefetch_batches counts blocks here: as many rows ahead as that many batches.
        per_batch = math.ceil(batch_size / cfg.transform_batch_size)
        blocks = iterable.iter_torch_batches(
            batch_size=None, device=device, prefetch_batches=prefetch_batches * per_batch
        )
        batches = rebatch(blocks, batch_size)
    n = 0
    for n, batch in enumerate(batches, start=1):
        yield batch
        if n % check_every == 0:
            check_skip_rate(ray.get(counter.totals.remote()), cfg)
    if n == 0 and resumed:  # started late in its pass: the rest was less than a batch
        return
    check_skip_rate(ray.get(counter.totals.remote()), cfg, end_of_epoch=True, batches=n)


def rebatch(
    blocks: Iterable[dict[str, Any]],
    batch_size: int,
    *,
    cat: Callable[[list[Any]], Any] = torch.cat,
    keep_rest: bool = False,
) -> Iterator[dict[str, Any]]:
    """Batches of exactly ``batch_size`` rows from blocks of any size, copying as little as
    possible.

    A block of exactly ``batch_size`` rows is yielded as it is, a larger one as views of its
    whole batches. Rows left over (a short block, a block's tail) wait in a pool and are joined
    into a batch by ``cat`` once the pool holds one. A short block thus costs a copy of its own
    rows only, instead of misaligning every later batch. The rows of a batch may come from
    other blocks and in another order than they arrived, which a shuffled stream does not mind.

    Args:
        blocks: dicts of arrays (tensors or ndarrays), each column with the block's rows as
            dimension 0.
        batch_size: rows per batch.
        cat: joins a column's arrays along dimension 0 (``torch.cat``, ``np.concatenate``).
        keep_rest: yield the rows still pooled at the end as one short batch; by default they
            are dropped, as ``drop_last`` drops them.
    """
    pool: list[dict[str, Any]] = []
    pooled = 0
    for block in blocks:
        rows = len(next(iter(block.values())))
        whole = rows - rows % batch_size
        for i in range(0, whole, batch_size):
            yield block if rows == batch_size else _rows(block, i, i + batch_size)
        if whole < rows:
            pool.append(_rows(block, whole, rows) if whole else block)
            pooled += rows - whole
        if pooled >= batch_size:
            joined = {k: cat([p[k] for p in pool]) for k in pool[0]}
            whole = pooled - pooled % batch_size
            for i in range(0, whole, batch_size):
                yield _rows(joined, i, i + batch_size)
            pooled -= whole
            pool = [_rows(joined, whole, whole + pooled)] if pooled else []
    if keep_rest and pool:
        yield {k: cat([p[k] for p in pool]) for k in pool[0]} if len(pool) > 1 else pool[0]


def _rows(block: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``[start, stop)`` of every column of ``block``, as views."""
    return {k: v[start:stop] for k, v in block.items()}


def check_skip_rate(
    totals: dict, cfg: DataConfig, *, end_of_epoch: bool = False, batches: int | None = None
) -> None:
    """Raise when the samples skipped so far pass the configured rate, or none were usable.

    Args:
        totals: ``SkipCounter.totals()``: ``seen`` and ``skipped`` per reason.
        end_of_epoch: judge the rate whatever the number of samples seen.
        batches: at the end of an epoch, how many batches this worker got.
    """
    seen = totals["seen"]
    skipped = SkipCounts(totals["skipped"])
    reasons = ", ".join(f"{k}: {v}" for k, v in skipped.most_common()) or "none"
    where = f"data.source={cfg.source}" + (f", data.path={cfg.path!r}" if cfg.path else "")
    if end_of_epoch and batches == 0:
        if seen and skipped.total == seen:
            raise DataQualityError(
                f"No usable images in {where}: all {seen} samples were skipped ({reasons})."
            )
        raise DataQualityError(
            f"No full batch reached this worker from {where}: {seen - skipped.total} usable "
            "samples were too few for the batch size times the number of workers. Lower the "
            "batch size or add images."
        )
    if seen == 0 or (seen < cfg.min_samples_for_skip_rate and not end_of_epoch):
        return
    rate = skipped.total / seen
    if rate > cfg.max_skip_rate:
        raise DataQualityError(
            f"{skipped.total} of {seen} samples ({rate:.1%}) from {where} could not be used, "
            f"more than data.max_skip_rate={cfg.max_skip_rate:.1%} ({reasons}). Fix or remove "
            "the bad files (`lejepa-ray data convert` lists them), or raise data.max_skip_rate."
        )


def skip_metrics(counter: ray.actor.ActorHandle) -> dict[str, float]:
    """Skip counts for the training metrics: ``data/seen``, ``data/skipped``,
    ``data/skipped/<reason>`` and ``data/skip_rate``."""
    totals = ray.get(counter.totals.remote())
    skipped = SkipCounts(totals["skipped"])
    metrics = {
        "data/seen": float(totals["seen"]),
        "data/skipped": float(skipped.total),
        "data/skip_rate": skipped.total / max(1, totals["seen"]),
    }
    metrics.update({f"data/skipped/{k}": float(v) for k, v in skipped.items()})
    return metrics
