"""One data-parallel rank's training: build the encoder and optimizer, step, log, checkpoint.

Nothing here knows about Ray: :func:`fit` takes an iterator of batches and two callbacks, so
the same loop runs inside a Ray Train worker (``pretrain.py``) and under plain ``torchrun``
(``benchmarks/train_step.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lejepa_ray.config import PretrainConfig, scaled_lr
from lejepa_ray.loss import lejepa_loss
from lejepa_ray.metrics import peak_rss_bytes
from lejepa_ray.model import BackboneSpec, LeJEPAEncoder
from lejepa_ray.optim import build_optimizer, build_scheduler
from lejepa_ray.parallelize import compute_dtype, meta_parameters, parallelize


@dataclass
class StepResult:
    """What one optimizer step produced (tensors stay on the device until logged)."""

    losses: torch.Tensor
    """(4,): total, prediction, sigreg, selection score, averaged over micro-batches."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping."""


class Trainer:
    """The encoder, its optimizer and schedule on one rank, and the LeJEPA step."""

    def __init__(self, cfg: PretrainConfig, spec: BackboneSpec, device: torch.device):
        self.cfg, self.spec, self.device = cfg, spec, device
        torch.manual_seed(cfg.seed)  # identical initialization on every rank (DDP, non-meta)
        meta = cfg.scaling.strategy == "fsdp" and cfg.model.meta_init
        with meta_parameters() if meta else contextlib.nullcontext():
            encoder = LeJEPAEncoder(spec, cfg.model)
        self.encoder = encoder
        self.model: nn.Module = parallelize(encoder, cfg.scaling, device, seed=cfg.seed)
        self.optimizer = build_optimizer(encoder, cfg.optim, scaled_lr(cfg))
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.step = 0
        # bf16: autocast under DDP; under FSDP2 the mixed-precision policy gives most units bf16
        # parameters, and autocast covers the units that keep fp32 ones (BatchNorm).
        self.autocast = compute_dtype(cfg.scaling, device) == torch.bfloat16

    def _gradient_sync(self, sync: bool):
        """Context in which backward all-reduces gradients only if ``sync`` (the last
        micro-batch of a step)."""
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(sync)
        elif not sync and hasattr(self.model, "no_sync"):  # DDP
            return self.model.no_sync()
        return contextlib.nullcontext()

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        """One optimizer step over ``micro_batches`` (each: ``global`` uint8
        (B, V_g, 3, S_g, S_g) and optionally ``local`` (B, V_l, 3, S_l, S_l))."""
        cfg = self.cfg
        self.model.train()
        losses = torch.zeros(4, device=self.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with self._gradient_sync(last), torch.autocast(
                    self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                z = self.model(batch["global"], batch.get("local"))
                out = lejepa_loss(
                    z[: batch["global"].shape[1]], z, self.step, cfg.loss.lam,
                    num_slices=cfg.loss.num_slices, t_max=cfg.loss.t_max,
                    num_knots=cfg.loss.num_knots, alpha=cfg.loss.alpha)
                (out.total / len(micro_batches)).backward()
            losses += torch.stack([out.total.detach(), out.prediction.detach(),
                                   out.sigreg.detach(), out.selection_score]).float()
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepResult(losses / len(micro_batches), grad_norm.detach())


@dataclass
class Meter:
    """Counters between two log lines."""

    start: float
    data_wait: float = 0.0
    images: int = 0
    steps: int = 0


def fit(trainer: Trainer, batches: Iterator[dict[str, torch.Tensor]], *,
        report: Callable[[int, dict[str, float] | None, bool], None],
        flops_per_image: float | None = None, peak_tflops: float | None = None,
        world_size: int = 1) -> dict[str, float]:
    """Run optimizer steps until ``cfg.optim.steps``; returns the last metrics.

    ``report(step, metrics, checkpoint)`` is called on every rank at the same steps (Ray's
    report is a barrier): with fresh ``metrics`` every ``logging.every_steps`` steps (None in
    between), and with ``checkpoint=True`` every ``checkpoint.every_steps`` steps and at the end.
    """
    cfg = trainer.cfg
    accum = cfg.optim.accum_steps
    meter = Meter(time.perf_counter())
    metrics: dict[str, float] = {}
    views = cfg.data.views.global_views + cfg.data.views.local_views
    while trainer.step < cfg.optim.steps:
        micro = []
        for _ in range(accum):
            t0 = time.perf_counter()
            micro.append(next(batches))
            meter.data_wait += time.perf_counter() - t0
        result = trainer.train_step(micro)
        meter.steps += 1
        meter.images += sum(len(b["global"]) for b in micro) * world_size
        step, final = trainer.step, trainer.step == cfg.optim.steps
        log = step % cfg.logging.every_steps == 0 or final
        save = step % cfg.checkpoint.every_steps == 0 or final
        if log:
            metrics = _metrics(trainer, result, meter, views, flops_per_image, peak_tflops,
                               world_size)
            meter = Meter(time.perf_counter())
        if log or save:
            report(step, metrics if log else None, save)
    return metrics


def _metrics(trainer: Trainer, result: StepResult, meter: Meter, views: int,
             flops_per_image: float | None, peak_tflops: float | None,
             world_size: int) -> dict[str, float]:
    losses = result.losses
    if dist.is_available() and dist.is_initialized():
        # The prediction loss is per rank; SIGReg is already global. Average for the log.
        losses = losses.clone()
        dist.all_reduce(losses, op=dist.ReduceOp.AVG)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    elapsed = max(time.perf_counter() - meter.start, 1e-9)
    total, pred, reg, score = losses.tolist()
    images_per_s = meter.images / elapsed
    out = {
        "loss": total, "loss/prediction": pred, "loss/sigreg": reg, "selection_score": score,
        "lr": trainer.scheduler.get_last_lr()[0], "grad_norm": float(result.grad_norm),
        "throughput/images_per_s": images_per_s,
        "throughput/views_per_s": images_per_s * views,
        "time/step_s": elapsed / max(1, meter.steps),
        "time/data_wait_fraction": meter.data_wait / elapsed,
        "memory/peak_gib": _peak_memory_gib(trainer.device),
    }
    if flops_per_image:
        tflops = flops_per_image * images_per_s / world_size / 1e12
        out["throughput/tflops_per_device"] = tflops
        if peak_tflops:
            out["throughput/mfu"] = tflops / peak_tflops
    return out


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_bytes() / 2**30

