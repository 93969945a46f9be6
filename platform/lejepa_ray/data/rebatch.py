"""Batches of an exact size from blocks of any size, copying only the rows that must be.

The views tasks use it to make one block per ``data.transform_batch_size`` rows, and the
training worker (``data.feed``) to make batches of its per-worker size from those blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


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
