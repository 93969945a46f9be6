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
and ``data.feed.EpochCursor`` pulls batches in a background thread, ``data.prefetch_batches``
ahead of the steps, asking for the next pass as soon as it has pulled the last batch of the
current one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

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
from lejepa_ray.data.rebatch import rebatch
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
    counter: ray.actor.ActorHandle | None = None,
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
    # task would straddle two units, which costs the trainer a copy of each
    # (``data.feed.iter_views``).
    yield from rebatch(units(), cfg.transform_batch_size, cat=np.concatenate, keep_rest=True)


def unit_views(
    rows: Rows,
    epoch: int,
    maker: ViewMaker,
    cfg: DataConfig,
    counter: ray.actor.ActorHandle | None = None,
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
    """The pipeline's ``SkipCounter``; pass it to ``data.feed.iter_epoch`` through the loop
    config."""
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
            make_views,  # type: ignore[arg-type]  # Ray's stubs: a 1-argument fn, no fn_kwargs
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
    # Ray's stubs keep @ray.remote's class as it was; the actor class it makes has .options.
    counter = SkipCounter.options(scheduling_strategy=here).remote()  # type: ignore[attr-defined]
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
