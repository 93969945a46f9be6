"""Feeding one training worker: its shard of the views stream as batches, pass after pass.

``data.stream`` builds the Ray Data pipeline on the driver; this module is the worker's side of
it. :class:`EpochCursor` walks the passes (one execution of the pipeline each, many epochs),
keeping the (epoch, samples) position checkpoints resume at, with a :class:`Prefetcher` thread
pulling batches ahead of the steps; :func:`iter_views` turns one pass of the shard into batches
of exactly the per-worker size (``data.rebatch`` copies only the rows that straddle blocks) and
enforces the skip-rate policy as it goes.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import ray
import torch

from lejepa_ray.data.config import DataConfig
from lejepa_ray.data.rebatch import rebatch
from lejepa_ray.data.stream import check_skip_rate


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
    of times (the shards are equal). Batches are dicts as made by ``data.stream.make_views``, with
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
    the next pass as soon as the current one is pulled (see ``data.stream``'s docstring). ``epoch``
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
    iterable: ray.data.Dataset | ray.data.DataIterator,
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
    ``data.rebatch``: a block of exactly ``batch_size`` rows (``data.transform_batch_size``
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
