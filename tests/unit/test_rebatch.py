"""``data.rebatch``: batches of exact size from the blocks the views tasks make, copying only
the rows of blocks that do not hold whole batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lejepa_ray.data.rebatch import rebatch


def blocks_of(sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    """Blocks of the given row counts; ``id`` numbers the rows across all of them."""
    out, first = [], 0
    for n in sizes:
        ids = torch.arange(first, first + n)
        out.append({"id": ids, "image": ids.float()[:, None].repeat(1, 3)})
        first += n
    return out


@pytest.mark.parametrize("seed", range(5))
def test_every_batch_is_whole_and_every_row_comes_once(seed):
    sizes = np.random.default_rng(seed).integers(1, 20, size=30).tolist()
    batches = list(rebatch(blocks_of(sizes), 8))
    assert all(len(b["id"]) == 8 for b in batches)
    assert len(batches) == sum(sizes) // 8  # as many as a drop_last batcher gives
    ids = torch.cat([b["id"] for b in batches])
    assert len(set(ids.tolist())) == len(ids)  # no row twice
    for b in batches:  # the columns of a row stay together
        assert torch.equal(b["image"][:, 0], b["id"].float())


def test_whole_blocks_pass_through_uncopied_even_after_a_short_one():
    blocks = blocks_of([8, 5, 8, 8, 3, 8])
    batches = list(rebatch(blocks, 8))
    # The aligned blocks are the very objects that came in; the two short ones made a batch.
    assert batches[0] is blocks[0] and batches[1] is blocks[2] and batches[2] is blocks[3]
    assert batches[3]["id"].tolist() == list(range(8, 13)) + list(range(29, 32))
    assert batches[4] is blocks[5]
    assert len(batches) == 5


def test_a_larger_block_is_cut_into_views_and_its_tail_waits():
    blocks = blocks_of([20, 4])
    batches = list(rebatch(blocks, 8))
    assert len(batches) == 3
    assert (
        batches[0]["id"].untyped_storage().data_ptr()
        == blocks[0]["id"].untyped_storage().data_ptr()
    )
    assert batches[2]["id"].tolist() == [16, 17, 18, 19, 20, 21, 22, 23]


def test_the_rest_is_dropped_or_kept_and_numpy_blocks_join():
    blocks = [{k: v.numpy() for k, v in b.items()} for b in blocks_of([5, 6])]
    assert [len(b["id"]) for b in rebatch(blocks, 4, cat=np.concatenate)] == [4, 4]
    kept = list(rebatch(blocks, 4, cat=np.concatenate, keep_rest=True))
    assert [len(b["id"]) for b in kept] == [4, 4, 3]
    assert sorted(np.concatenate([b["id"] for b in kept]).tolist()) == list(range(11))
    assert list(rebatch([], 4, keep_rest=True)) == []


def test_empty_blocks_are_passed_over_and_batches_hold_only_rows_given():
    blocks = blocks_of([0, 8, 0, 5, 0, 7])
    batches = list(rebatch(blocks, 4))
    assert len(batches) == 20 // 4
    ids = torch.cat([b["id"] for b in batches]).tolist()
    assert len(set(ids)) == len(ids) and set(ids) <= set(range(20))


def test_views_tasks_hand_over_whole_units_and_pool_the_short_ones(monkeypatch):
    """make_views: an epoch's short last unit and a unit with bad images do not misalign the
    blocks after them; only the task's last block is short, and no row is lost."""
    from lejepa_ray.data import stream
    from lejepa_ray.data.config import DataConfig
    from lejepa_ray.data.plan import Plan

    cfg = DataConfig(source="synthetic", transform_batch_size=8)
    plan = Plan(np.ones(20, dtype=np.int64), unit_rows=8, seed=0)  # epochs of 8 + 8 + 4 rows
    bad = {4}  # unit 4 (epoch 1's second) loses 3 rows to bad images

    class Reader:
        def read(self, spans):
            return [p.piece for p in spans]

    def fake_unit_views(rows, epoch, maker, cfg, counter=None):
        n = len(rows) - (3 if len(calls) in bad else 0)
        calls.append(epoch)
        ids = np.arange(n) + 100 * len(calls)
        return {"label": ids, "epoch": np.full(n, epoch)}, (n, 0)

    calls: list[int] = []
    monkeypatch.setattr(stream, "unit_views", fake_unit_views)
    monkeypatch.setattr(stream, "execution_index", lambda: 0)
    monkeypatch.setattr(stream.ViewMaker, "of", classmethod(lambda cls, cfg: None))
    blocks = list(
        stream.make_views(
            {"id": np.arange(9)}, plan, Reader(), cfg, units_per_pass=9, start=stream.Start()
        )
    )
    sizes = [len(b["label"]) for b in blocks]
    # 3 epochs of 20 rows, less 3 bad: 57 rows; every block whole but the last.
    assert sum(sizes) == 57 and sizes[:-1] == [8] * (len(sizes) - 1) and 0 < sizes[-1] < 8
    got = np.concatenate([b["label"] for b in blocks])
    assert len(set(got.tolist())) == 57
