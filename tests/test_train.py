"""The training loop on one process: steps, accumulation, logging and checkpoint cadence."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lejepa_ray.config import load_config
from lejepa_ray.metrics import format_line
from lejepa_ray.pretrain import resolve_backbone
from lejepa_ray.train import Trainer, fit


def _trainer(*overrides: str) -> Trainer:
    cfg = load_config(None, [
        "model.name=resnet18", "model.projector_hidden=64", "model.projector_dim=16",
        "data.views.global_size=32", "data.views.local_size=16", "data.views.local_views=2",
        "loss.num_slices=64", "optim.steps=6", "optim.warmup_steps=2",
        "scaling.batch_size=8", "scaling.num_workers=1", *overrides])
    return Trainer(cfg, resolve_backbone(cfg), torch.device("cpu"))


def _batches(n: int = 8):
    gen = torch.Generator().manual_seed(0)
    batch = {"global": torch.randint(0, 256, (n, 2, 3, 32, 32), generator=gen,
                                     dtype=torch.uint8),
             "local": torch.randint(0, 256, (n, 2, 3, 16, 16), generator=gen,
                                    dtype=torch.uint8)}
    return itertools.repeat(batch)


def test_fit_reports_at_log_and_checkpoint_steps():
    trainer = _trainer("logging.every_steps=2", "checkpoint.every_steps=3")
    calls = []
    last = fit(trainer, _batches(), report=lambda s, m, save: calls.append((s, m is None, save)),
               flops_per_image=1e9, peak_tflops=1.0)
    assert trainer.step == 6
    # (step, metrics missing, checkpoint): logs at 2, 4, 6; checkpoints at 3 and the end.
    assert calls == [(2, False, False), (3, True, True), (4, False, False), (6, False, True)]
    for key in ("loss", "loss/prediction", "loss/sigreg", "selection_score", "lr", "grad_norm",
                "throughput/images_per_s", "throughput/views_per_s", "time/data_wait_fraction",
                "memory/peak_gib", "throughput/tflops_per_device", "throughput/mfu"):
        assert key in last, key
    assert last["throughput/views_per_s"] == pytest.approx(4 * last["throughput/images_per_s"])
    assert last["selection_score"] == pytest.approx(last["loss"] / 0.05**0.4, rel=1e-5)
    assert "step 6/6" in format_line(6, 6, last)


def test_learning_rate_follows_the_schedule_per_optimizer_step():
    trainer = _trainer("optim.accum_steps=2", "optim.lr=5e-4", "optim.lr_reference_batch=16")
    lrs = []
    for _ in range(4):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step(list(itertools.islice(_batches(), 2)))
    # Peak 5e-4 at batch 8 × 2 micro-batches = 16; warm-up 2 steps, then a cosine over 4.
    assert lrs == pytest.approx([2.5e-4, 5e-4, 5e-4, 5e-4 * 0.5 * (1 + math.cos(math.pi / 4))])


def test_accumulation_averages_micro_batches():
    """Two identical micro-batches give the gradient and loss of one."""
    one, two = _trainer(), _trainer("optim.accum_steps=2")
    batch = next(_batches())
    a, b = one.train_step([batch]), two.train_step([batch, batch])
    torch.testing.assert_close(b.grad_norm, a.grad_norm, rtol=1e-5, atol=0)
    torch.testing.assert_close(b.losses, a.losses, rtol=1e-6, atol=0)


def _same_step(*overrides: str) -> None:
    batch = next(_batches())
    base = _trainer().train_step([batch])
    other = _trainer(*overrides).train_step([batch])
    torch.testing.assert_close(other.losses, base.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other.grad_norm, base.grad_norm, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_recomputes_the_same_step():
    trainer = _trainer("scaling.activation_checkpointing=true")
    assert trainer.encoder.backbone.grad_checkpointing
    _same_step("scaling.activation_checkpointing=true")


@pytest.mark.slow
def test_compiled_blocks_compute_the_same_step():
    _same_step("scaling.compile=true")
