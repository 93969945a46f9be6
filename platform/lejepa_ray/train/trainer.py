"""One data-parallel rank's training: build the encoder and optimizer, step, log, checkpoint.

Nothing here knows about Ray: :func:`fit` takes an iterator of batches and two callbacks, so
the same loop runs inside a Ray Train worker (``launch/worker.py``) and under plain ``torchrun``
(``benchmarks/train_step.py``).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from lejepa_ray.config import PretrainConfig, scaled_lr
from lejepa_ray.data.kernel_sets import device_augment
from lejepa_ray.model.encoder import BackboneSpec, LeJEPAEncoder
from lejepa_ray.model.parallelize import compute_dtype, meta_parameters, parallelize
from lejepa_ray.objective.loss import LeJEPALoss, LossFn, build_loss
from lejepa_ray.train.checkpoint import ModelAndOptimizer, TrainState
from lejepa_ray.train.memory import peak_rss_bytes
from lejepa_ray.train.optim import build_optimizer, build_scheduler
from lejepa_ray.train.timing import DeviceClock


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient; the run stopped."""


@dataclass
class StepResult:
    """What one optimizer step produced (tensors stay on the device until logged)."""

    loss: LeJEPALoss
    """The loss's parts, detached, averaged over the step's micro-batches."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping."""
    finite: bool
    """The loss and gradient were finite on every rank, and the optimizer stepped."""


class Trainer:
    """The encoder, its optimizer and schedule on one rank, and the LeJEPA step."""

    def __init__(
        self,
        cfg: PretrainConfig,
        spec: BackboneSpec,
        device: torch.device,
        batch_share: float = 1.0,
    ):
        """``batch_share``: this rank's images per micro-batch × the number of ranks / the
        global batch (``data.batch_split.batch_share``); 1 unless the ranks' batches differ."""
        self.cfg, self.spec, self.device = cfg, spec, device
        torch.manual_seed(cfg.seed)  # identical initialization on every rank (DDP, non-meta)
        meta = cfg.scaling.strategy == "fsdp" and cfg.model.meta_init
        with meta_parameters() if meta else contextlib.nullcontext():
            encoder = LeJEPAEncoder(spec, cfg.model)
        self.encoder = encoder
        self.model: nn.Module = parallelize(encoder, cfg.scaling, device, seed=cfg.seed)
        self.optimizer = build_optimizer(encoder, cfg.optim, scaled_lr(cfg))
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.tensors = ModelAndOptimizer(self.model, self.optimizer)
        """What a checkpoint saves of this rank's tensors (a DCP ``Stateful``)."""
        self.loss_fn: LossFn = build_loss(cfg.loss, prediction_weight=batch_share)
        """(global embeddings (V_g, B, K), all embeddings (V, B, K), step) -> the loss."""
        self.step = 0
        self.skipped_steps = 0
        """Steps skipped (no update) because their loss or gradient was not finite."""
        self.bad_streak = 0
        """Consecutive skipped steps up to now."""
        # bf16: autocast under DDP; under FSDP2 the mixed-precision policy gives most units bf16
        # parameters, and autocast covers the units that keep fp32 ones (BatchNorm).
        self.autocast = compute_dtype(cfg.scaling, device) == torch.bfloat16

    def restore(self, state: TrainState) -> None:
        """Take the schedule and counters of a checkpoint whose tensors were just loaded into
        :attr:`tensors`."""
        self.scheduler.load_state_dict(state.scheduler)
        for group, lr in zip(
            self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = lr
        self.step, self.skipped_steps = state.step, state.skipped_steps

    def sync_buffers(self) -> None:
        """Make replicated buffers (BatchNorm running statistics) rank 0's on every rank.

        They drift apart between ranks, which normalize their own batches, and a checkpoint
        keeps one rank's copy; DDP broadcasts them before each forward anyway. Call on every
        rank before saving."""
        if not dist.is_initialized():
            return
        for buffer in self.model.buffers():
            if not hasattr(buffer, "to_local"):  # sharded (DTensor) buffers are not replicas
                dist.broadcast(buffer, src=0)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        """One optimizer step over ``micro_batches`` (each: ``global`` uint8
        (B, V_g, 3, S_g, S_g) and optionally ``local`` (B, V_l, 3, S_l, S_l)).

        A step whose loss or gradient is not finite on any rank is skipped: no optimizer
        update, but the step count and LR schedule advance, so the run keeps its plan.

        Raises:
            NonFiniteLossError: after ``fault.max_nonfinite_steps`` skipped steps in a row.
        """
        self.model.train()
        loss = self._forward_backward(micro_batches)
        grad_norm = self._clip_gradients()
        ok = self._finite_on_every_rank(loss, grad_norm)
        self._update(ok)
        if self.bad_streak >= self.cfg.fault.max_nonfinite_steps:
            raise NonFiniteLossError(self._stop_message(loss, grad_norm))
        return StepResult(loss, grad_norm.detach(), ok)

    def _forward_backward(self, micro_batches: list[dict[str, torch.Tensor]]) -> LeJEPALoss:
        """Accumulate the gradients of the step's micro-batches; the mean of their losses."""
        parts = torch.zeros(len(LeJEPALoss.names()), device=self.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with (
                self._gradient_sync(last),
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast),
            ):
                z = self.model(batch["global"], batch.get("local"))  # (V, B, K)
                out = self.loss_fn(z[: batch["global"].shape[1]], z, self.step)
                (out.total / len(micro_batches)).backward()
            parts += out.stack()
        return LeJEPALoss.unstack(parts / len(micro_batches))

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Context in which backward all-reduces gradients only if ``sync`` (the last
        micro-batch of a step)."""
        if isinstance(self.model, FSDPModule):
            self.model.set_requires_gradient_sync(sync)
        elif not sync and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _clip_gradients(self) -> torch.Tensor:
        """Clip to ``optim.grad_clip``; the global norm before clipping (a scalar tensor)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        return grad_norm

    def _finite_on_every_rank(self, loss: LeJEPALoss, grad_norm: torch.Tensor) -> bool:
        """Whether the loss and gradient are finite on every rank: decided on the host, the
        same on every rank, so that every rank skips together. One host sync and a
        one-element all-reduce per step."""
        finite = (torch.isfinite(loss.stack()).all() & torch.isfinite(grad_norm)).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def _update(self, ok: bool) -> None:
        """Step the optimizer if ``ok``; advance the schedule and the step count either way."""
        if ok:
            self.optimizer.step()
            self.bad_streak = 0
        else:
            self.skipped_steps += 1
            self.bad_streak += 1
        with warnings.catch_warnings():
            # torch warns when the schedule advances before any optimizer step (here: the
            # first steps were skipped); that is the plan, and LambdaLR skips no value.
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _stop_message(self, loss: LeJEPALoss, grad_norm: torch.Tensor) -> str:
        return (
            f"stopped at step {self.step}: the last {self.bad_streak} steps had a non-finite "
            f"loss or gradient (loss {loss.total.item():.4g}, gradient norm "
            f"{grad_norm.item():.4g}) and were skipped; fault.max_nonfinite_steps="
            f"{self.cfg.fault.max_nonfinite_steps}. Lower optim.lr or raise optim.warmup_steps, "
            "then rerun with the same name to resume from the last good checkpoint."
        )


@dataclass
class Meter:
    """Counters between two log lines."""

    start: float
    data_wait: float = 0.0
    augment: DeviceClock | None = None
    """Time spent on photometric views on the device (``data.augment_on=device``)."""
    images: int = 0
    """Images this rank trained on (all micro-batches); summed over ranks when logged."""
    steps: int = 0
    good_steps: int = 0
    loss_sum: torch.Tensor | None = None
    """Sum of the finite steps' (P,) stacked loss parts (``LeJEPALoss.stack``), on the device
    (no host sync per step)."""

    def add(self, result: StepResult) -> None:
        self.steps += 1
        if result.finite:
            self.good_steps += 1
            parts = result.loss.stack()
            self.loss_sum = parts if self.loss_sum is None else self.loss_sum + parts


class RecentMean:
    """Mean of the finite steps' loss parts (by name) over the last ``steps`` optimizer steps
    or a few more: whole log windows are kept, so it costs no host sync of its own. It restarts
    empty when a run resumes."""

    def __init__(self, steps: int):
        self.steps = steps
        self.windows: deque[tuple[dict[str, float], int]] = deque()

    def add(self, means: dict[str, float], count: int) -> None:
        """One log window: the mean losses of its ``count`` finite steps."""
        if count == 0:
            return
        self.windows.append((means, count))
        while sum(c for _, c in self.windows) - self.windows[0][1] >= self.steps:
            self.windows.popleft()

    def value(self) -> dict[str, float] | None:
        """The step-weighted mean of each part, or None before the first finite step."""
        total = sum(c for _, c in self.windows)
        if total == 0:
            return None
        return {
            name: sum(m[name] * c for m, c in self.windows) / total for name in self.windows[0][0]
        }


def fit(
    trainer: Trainer,
    batches: Iterator[dict[str, torch.Tensor]],
    *,
    report: Callable[[int, dict[str, float], bool], None],
    flops_per_image: float | None = None,
    peak_tflops: float | None = None,
    world_size: int = 1,
    checkpoint_now: Callable[[int], bool] | None = None,
) -> dict[str, float]:
    """Run optimizer steps from ``trainer.step`` until ``cfg.optim.steps``; returns the last
    metrics.

    ``checkpoint_now(step)``, when given, is called on every rank after every step: True
    checkpoints at this step, out of turn (a preemption notice).

    ``report(step, metrics, checkpoint)`` is called on every rank at the same steps (Ray's
    report is a barrier): with fresh ``metrics`` every ``logging.every_steps`` steps and at each
    checkpoint, and with ``checkpoint=True`` every ``checkpoint.every_steps`` steps and at the
    end. Logged losses are means over the finite steps since the previous log; ``loss/smoothed``
    and ``selection_score/smoothed`` average the last ``loss.score_smoothing_steps`` steps (W),
    and ``loss/rel_change`` compares that mean with the one logged W steps earlier (the W steps
    before): negative while the loss still falls, NaN until two windows have passed.

    Raises:
        NonFiniteLossError: too many non-finite steps in a row; no checkpoint is written for
            them, so the latest checkpoint is the last good one.
    """
    cfg = trainer.cfg
    accum = cfg.optim.accum_steps
    meter = Meter(time.perf_counter())
    recent = RecentMean(cfg.loss.score_smoothing_steps)
    smoothed_at: dict[int, float] = {}  # step -> loss/smoothed logged then
    metrics: dict[str, float] = {}
    views = cfg.data.views.global_views + cfg.data.views.local_views
    augment = device_augment(cfg.data)  # None: the views arrive finished
    while trainer.step < cfg.optim.steps:
        micro = []
        for _ in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            meter.data_wait += time.perf_counter() - t0
            if augment is not None:
                meter.augment = meter.augment or DeviceClock(trainer.device)
                with meter.augment:
                    batch = augment(batch)
            micro.append(batch)
        result = trainer.train_step(micro)
        meter.add(result)
        meter.images += sum(len(b["global"]) for b in micro)
        step, final = trainer.step, trainer.step == cfg.optim.steps
        save = step % cfg.checkpoint.every_steps == 0 or final
        if checkpoint_now is not None and checkpoint_now(step):
            save = True
        # A checkpoint always comes with fresh metrics: what Ray keeps with it (and a sweep
        # ranks by) is then that step's, not an older window's.
        log = step % cfg.logging.every_steps == 0 or save
        if log:
            metrics = _metrics(
                trainer, result, meter, recent, views, flops_per_image, peak_tflops, world_size
            )
            metrics["loss/rel_change"] = _relative_change(
                smoothed_at, step, metrics["loss/smoothed"], cfg.loss.score_smoothing_steps
            )
            meter = Meter(time.perf_counter())
            report(step, metrics, save)
    return metrics


def _relative_change(history: dict[int, float], step: int, value: float, window: int) -> float:
    """(value − v) / |v|, v the value logged at the latest step ≤ ``step − window``; records
    ``value`` at ``step`` and forgets logs no later call can need. NaN when no log is that old
    (or v is 0 or not finite)."""
    earlier = [s for s in history if s <= step - window]
    history[step] = value
    if not earlier:
        return float("nan")
    for old in earlier[:-1]:  # steps only grow: the newest of these serves every later call
        del history[old]
    then = history[max(earlier)]
    if not math.isfinite(then) or then == 0:
        return float("nan")
    return (value - then) / abs(then)


def _metrics(
    trainer: Trainer,
    result: StepResult,
    meter: Meter,
    recent: RecentMean,
    views: int,
    flops_per_image: float | None,
    peak_tflops: float | None,
    world_size: int,
) -> dict[str, float]:
    if meter.loss_sum is None:  # every step since the last log was skipped
        losses = torch.full((len(LeJEPALoss.names()),), float("nan"), device=trainer.device)
    else:
        losses = meter.loss_sum / meter.good_steps
    # Counted, not assumed: every rank's images, so an elastic group's constant global batch
    # is a measurement (float64 on the device: exact far beyond any run's count).
    images = torch.tensor([float(meter.images)], dtype=torch.float64, device=trainer.device)
    if dist.is_available() and dist.is_initialized():
        # The prediction loss is per rank (weighted by the rank's share of the global batch);
        # SIGReg is already global. The average over ranks is the global batch's loss.
        dist.all_reduce(losses, op=dist.ReduceOp.AVG)  # a fresh tensor: no step's is changed
        dist.all_reduce(images, op=dist.ReduceOp.SUM)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    elapsed = max(time.perf_counter() - meter.start, 1e-9)
    means = dict(zip(LeJEPALoss.names(), losses.tolist(), strict=True))
    recent.add(means, meter.good_steps)
    smoothed = recent.value() or dict.fromkeys(means, float("nan"))
    global_images = images.item()
    images_per_s = global_images / elapsed
    out = {
        **{metric: means[name] for name, metric in LeJEPALoss.metric_names().items()},
        "loss/smoothed": smoothed["total"],
        "selection_score/smoothed": smoothed["selection_score"],
        "lr": trainer.scheduler.get_last_lr()[0],
        "grad_norm": float(result.grad_norm),
        "batch/images_per_step": global_images / max(1, meter.steps),
        "throughput/images_per_s": images_per_s,
        "throughput/views_per_s": images_per_s * views,
        "time/step_s": elapsed / max(1, meter.steps),
        "time/data_wait_fraction": meter.data_wait / elapsed,
        "memory/peak_gib": _peak_memory_gib(trainer.device),
        "steps/skipped_nonfinite": float(trainer.skipped_steps),
    }
    if meter.augment is not None:
        out["time/augment"] = meter.augment.seconds() / max(1, meter.steps)
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
