"""lejepa_ray.objective.sigreg: the statistic, its gradient, its cost shape, bad input, and
exactness across ranks (2 gloo processes).

The one-process tests are in ``tests/unit/test_sigreg.py``."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lejepa_ray.objective.sigreg import sigreg

STEP, SLICES = 11, 48


def _cases() -> dict[str, tuple[torch.Tensor, list[int]]]:
    gen = torch.Generator().manual_seed(8)
    return {
        "float64_equal": (torch.randn(3, 32, 20, generator=gen, dtype=torch.float64), [16, 16]),
        "float64_unequal": (torch.randn(2, 21, 20, generator=gen, dtype=torch.float64), [5, 16]),
        "float32_equal": (torch.randn(2, 512, 64, generator=gen), [256, 256]),
    }


def _ddp_setup() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(9)
    return torch.nn.Linear(12, 16).double(), torch.randn(40, 12, dtype=torch.float64)


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name, (z_full, split) in _cases().items():
            z = z_full.split(split, dim=-2)[rank].clone().requires_grad_(True)
            loss = sigreg(z, STEP, SLICES)
            loss.backward()
            results[name] = {"loss": loss.detach(), "grad": z.grad}

        model, inputs = _ddp_setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        sigreg(ddp(inputs.chunk(world)[rank]), STEP, SLICES).backward()
        results["ddp"] = {n: p.grad for n, p in ddp.module.named_parameters()}

        # A NaN on rank 1 only: every rank must raise (no rank left waiting in a collective).
        z = torch.randn(8, 6)
        if rank == 1:
            z[3, 2] = float("nan")
        try:
            sigreg(z, STEP, SLICES)
            results["nan"] = "no error"
        except ValueError as error:
            results["nan"] = str(error)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_sigreg_is_exact(tmp_path):
    world = 2
    mp.spawn(
        _distributed_worker,
        args=(world, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    for name, (z_full, split) in _cases().items():
        z = z_full.clone().requires_grad_(True)
        loss = sigreg(z, STEP, SLICES)
        loss.backward()
        # float64: exact up to summation order; float32: relative 1e-5.
        tol = (
            {"rtol": 1e-10, "atol": 1e-12}
            if z.dtype == torch.float64
            else {"rtol": 1e-5, "atol": 0}
        )
        for rank, grad_full in enumerate(z.grad.split(split, dim=-2)):
            torch.testing.assert_close(ranks[rank][name]["loss"], loss.detach(), **tol)
            torch.testing.assert_close(ranks[rank][name]["grad"], world * grad_full, **tol)

    # DDP averages the per-rank parameter gradients: that average is the one-process gradient.
    model, inputs = _ddp_setup()
    sigreg(model(inputs), STEP, SLICES).backward()
    for name, param in model.named_parameters():
        for rank in range(world):
            torch.testing.assert_close(ranks[rank]["ddp"][name], param.grad, rtol=1e-10, atol=1e-12)

    assert "another rank" in ranks[0]["nan"]
    assert "z contains 1 non-finite value(s)" in ranks[1]["nan"]
