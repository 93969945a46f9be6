"""How a global batch is split over the ranks of a data-parallel group of any size.

The rule of elastic runs: the global batch stays ``scaling.batch_size × max workers`` at every
group size, so the learning rate, its schedule and SIGReg's N do not change on a resize. Each of
``w`` ranks takes ``global_batch / w`` images, rounded up for the first ``global_batch mod w``
ranks and down for the others. Every rank draws the larger count from the data stream
(:func:`drawn_per_worker`), so that all ranks go through their equal shards in step, and the
others leave their last image out of the step; :func:`batch_share` weighs each rank's loss so
that averaging gradients over ranks gives the global batch's mean.
"""

from __future__ import annotations


def batch_split(global_batch: int, world_size: int) -> list[int]:
    """Images each of ``world_size`` ranks trains on per micro-batch, by rank: they sum to
    ``global_batch`` and differ by at most one, the larger first.

    Raises:
        ValueError: ``world_size`` below 1 or above ``global_batch`` (a rank with no image).
    """
    if not 1 <= world_size <= global_batch:
        raise ValueError(f"world size {world_size} cannot split a batch of {global_batch}")
    base, extra = divmod(global_batch, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def drawn_per_worker(global_batch: int, world_size: int) -> int:
    """Rows each rank takes from the data stream per micro-batch: the largest share of
    :func:`batch_split`, ``ceil(global_batch / world_size)``."""
    return batch_split(global_batch, world_size)[0]


def batch_share(global_batch: int, rank: int, world_size: int) -> float:
    """``rank``'s images per micro-batch × ``world_size`` / ``global_batch``: 1 on an even
    split, slightly above or below it on an uneven one. Weighting a rank's per-sample mean loss
    by it makes data-parallel gradient averaging the global batch's mean."""
    return batch_split(global_batch, world_size)[rank] * world_size / global_batch
