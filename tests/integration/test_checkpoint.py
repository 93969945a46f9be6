"""Sharded checkpoints: exact round trips, resharding across world sizes and strategies, and
clear errors for incomplete, corrupt, foreign or malicious files.

The one-process tests are in ``tests/unit/test_checkpoint.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from checkpoint_helpers import (
    _assert_bitwise,
    _batch,
    _load,
    _save,
    _tensors,
    _trainer,
)

WORLD = 2


def _fsdp_worker(rank: int, init_file: str, out_dir: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        trainer = _trainer("scaling.strategy=fsdp", f"scaling.num_workers={WORLD}")
        if mode == "save":
            for i in range(3):
                trainer.train_step([_batch(10 * i + rank)])
            _save(trainer, Path(out_dir, "fsdp"), data_epoch=1, data_samples=32)
        else:
            stats: dict = {}  # resuming FSDP shards on as many ranks: bytes read per rank
            _load(Path(out_dir, "fsdp"), trainer, stats=stats)
            Path(out_dir, f"bytes_{rank}.json").write_text(json.dumps(stats))
            _load(Path(out_dir, "single"), trainer)
        tensors = _tensors(trainer)
        if rank == 0:
            torch.save(
                {
                    "tensors": tensors,
                    "step": trainer.step,
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                },
                f"{out_dir}/fsdp_{mode}.pt",
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_shards_resume_in_one_process_and_back(tmp_path):
    mp.spawn(
        _fsdp_worker, args=(str(tmp_path / "init1"), str(tmp_path), "save"), nprocs=WORLD, join=True
    )
    fsdp = torch.load(tmp_path / "fsdp_save.pt", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "fsdp").glob("__*")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert sorted(p.name for p in (tmp_path / "fsdp/rng").iterdir()) == [
        "rank_00000.json",
        "rank_00001.json",
    ]

    # 2 FSDP ranks -> 1 process without sharding: the gathered tensors, bit for bit.
    single, stats = _trainer(), {}
    state = _load(tmp_path / "fsdp", single, stats=stats)
    assert (state.world_size, single.step) == (2, 3)
    assert stats["bytes_read"] > 0.95 * stats["bytes_total"]  # one process holds everything
    assert single.optimizer.param_groups[0]["lr"] == fsdp["lr"]
    _assert_bitwise(_tensors(single), fsdp["tensors"])

    # 1 process -> 2 FSDP ranks: each rank loads its shards of the same tensors.
    single.train_step([_batch(99)])
    _save(single, tmp_path / "single")
    mp.spawn(
        _fsdp_worker, args=(str(tmp_path / "init2"), str(tmp_path), "load"), nprocs=WORLD, join=True
    )
    back = torch.load(tmp_path / "fsdp_load.pt", weights_only=True)
    assert back["step"] == 4
    _assert_bitwise(back["tensors"], _tensors(single))
    # Resuming the FSDP checkpoint on 2 ranks, each rank read its own shards: half of the bytes.
    # (From the unsharded checkpoint each reads every whole tensor: DCP reads a stored item
    # whole and narrows it in memory.)
    read = [json.loads((tmp_path / f"bytes_{r}.json").read_text()) for r in range(WORLD)]
    for r in read:
        assert 0.45 * r["bytes_total"] < r["bytes_read"] < 0.55 * r["bytes_total"], read
