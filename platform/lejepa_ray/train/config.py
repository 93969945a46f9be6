"""Training's configuration: the optimizer (``optim.*``), checkpoints (``checkpoint.*``), what
a run survives (``fault.*``) and what it logs (``logging.*``).

``train.optim`` builds AdamW and its schedule from :class:`OptimConfig`; ``train.checkpoint``
and ``train.upload`` follow :class:`CheckpointConfig`; the trainer and the launcher's worker
loop follow :class:`FaultConfig`; ``train.tracking`` and ``train.metrics`` follow
:class:`LoggingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lejepa_ray.errors import check_field

ADAMW_IMPLEMENTATIONS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "for-loop": {"foreach": False, "fused": False},
}
"""``optim.implementation`` -> the keyword arguments ``torch.optim.AdamW`` takes for it."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, clipping and gradient accumulation."""

    steps: int = 1000
    """Optimizer steps of the whole run (the schedule's length)."""
    lr: float = 5e-4
    """Peak learning rate at a global batch of ``lr_reference_batch`` images; scaled linearly
    with the actual global batch (the paper: 5e-4 at 512)."""
    lr_reference_batch: int = 512
    """Global batch at which ``lr`` applies."""
    min_lr_ratio: float = 0.0
    """The cosine decays to ``min_lr_ratio × peak``."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to the peak, in optimizer steps."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay on weights (not on biases, norms, tokens or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's β1, β2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still
    logged)."""
    accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    implementation: str = "fused"
    """How AdamW's update runs: ``fused`` (every operation of the update in one pass over each
    parameter on CPU, multi-tensor kernels on CUDA, in place; on CPU 5x faster than
    ``for-loop`` for ``resnet10t``), ``foreach`` (multi-tensor, one operation at a time, with
    intermediates the size of the parameters) or ``for-loop`` (one parameter at a time). The
    same arithmetic up to rounding."""

    def __post_init__(self) -> None:
        check_field(self.steps >= 1, "optim.steps", self.steps, ">= 1")
        check_field(self.lr > 0, "optim.lr", self.lr, "> 0")
        check_field(
            self.lr_reference_batch >= 1,
            "optim.lr_reference_batch",
            self.lr_reference_batch,
            ">= 1",
        )
        check_field(
            0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "in [0, 1]"
        )
        check_field(
            0 <= self.warmup_steps < self.steps,
            "optim.warmup_steps",
            self.warmup_steps,
            f"in [0, optim.steps={self.steps})",
        )
        check_field(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        check_field(
            all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas, "two values in [0, 1)"
        )
        check_field(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0 (0 disables)")
        check_field(self.accum_steps >= 1, "optim.accum_steps", self.accum_steps, ">= 1")
        check_field(
            self.implementation in ADAMW_IMPLEMENTATIONS,
            "optim.implementation",
            self.implementation,
            f"one of {', '.join(ADAMW_IMPLEMENTATIONS)}",
        )


@dataclass
class CheckpointConfig:
    """When sharded checkpoints are written and how many are kept."""

    every_steps: int = 500
    """Write a checkpoint every this many optimizer steps (and always at the end). A killed
    worker costs at most this many steps of recomputation, plus, with ``upload=async``, the
    steps trained while the latest checkpoint was still being uploaded and registered."""
    keep: int = 2
    """Keep the latest this many checkpoints (older ones are deleted once a newer one is
    completely written)."""
    upload: str = "async"
    """``async``: training goes on while a checkpoint uploads to the run directory (at most one
    upload in flight; the next checkpoint first waits for it). ``sync``: training waits for
    each upload. Either way a checkpoint counts only once every file is stored and its manifest,
    written last, is (``lejepa_ray.train.upload``)."""

    def __post_init__(self) -> None:
        check_field(self.every_steps >= 1, "checkpoint.every_steps", self.every_steps, ">= 1")
        check_field(self.keep >= 1, "checkpoint.keep", self.keep, ">= 1")
        check_field(
            self.upload in UPLOAD_MODES, "checkpoint.upload", self.upload, " or ".join(UPLOAD_MODES)
        )


UPLOAD_MODES = ("async", "sync")


@dataclass
class FaultConfig:
    """What the run survives: worker failures, and steps whose loss or gradient is not finite."""

    max_failures: int = 3
    """Restarts of the worker group (from the latest checkpoint) after a worker dies or
    raises, before the run fails; -1: unlimited, 0: none."""
    max_nonfinite_steps: int = 5
    """Stop the run after this many consecutive steps with a non-finite loss or gradient (each
    is skipped: no optimizer update). The last good checkpoint is kept."""
    inject_nonfinite_steps: list[int] = field(default_factory=list)
    """Testing hook: make the loss of these optimizer steps (1-based) NaN, to exercise the
    guard."""
    preemption_check_steps: int = 10
    """Ask Ray Train every this many steps whether a node of the group is being preempted (a
    spot reclaim notice; a collective, at the same steps on every rank). On a notice the run
    checkpoints at once and waits for Ray Train to restart it on the capacity left. 0: never
    ask (a preemption then costs up to ``checkpoint.every_steps`` steps)."""
    max_preemptions: int = -1
    """Restarts after preempted nodes, counted apart from ``max_failures``; -1: unlimited
    (Ray Train's ``FailureConfig.max_preemption_failures``)."""
    relax_collectives_on_preemption: bool = False
    """Let the ranks that survive a preemption pass Ray Train's report and notice barriers
    without the preempted ranks (Ray's ``FailureConfig.relax_collectives_on_preemption``;
    ignored when rank 0 is among them). Only with ``preemption_check_steps=0``: a checkpoint
    needs every rank's shards, so the one at a notice cannot be taken without them (see
    docs/scaling.md, "Spot preemptions")."""
    preemption_grace_s: float = 0.0
    """Seconds the surviving workers may run past the preemption deadline, for a checkpoint
    upload that outlasts the drain window (Ray's ``FailureConfig.preemption_grace_s``)."""

    def __post_init__(self) -> None:
        check_field(self.max_failures >= -1, "fault.max_failures", self.max_failures, ">= -1")
        check_field(
            self.preemption_check_steps >= 0,
            "fault.preemption_check_steps",
            self.preemption_check_steps,
            ">= 0 (0: never ask)",
        )
        check_field(
            self.max_preemptions >= -1, "fault.max_preemptions", self.max_preemptions, ">= -1"
        )
        check_field(
            not (self.relax_collectives_on_preemption and self.preemption_check_steps),
            "fault.relax_collectives_on_preemption",
            self.relax_collectives_on_preemption,
            "false while fault.preemption_check_steps > 0: the checkpoint at a notice needs "
            "every rank, and a relaxed barrier lets the others go on without the preempted "
            "ones (docs/scaling.md, 'Spot preemptions')",
        )
        check_field(
            self.preemption_grace_s >= 0,
            "fault.preemption_grace_s",
            self.preemption_grace_s,
            ">= 0 seconds",
        )
        check_field(
            self.max_nonfinite_steps >= 1,
            "fault.max_nonfinite_steps",
            self.max_nonfinite_steps,
            ">= 1",
        )
        check_field(
            all(s >= 1 for s in self.inject_nonfinite_steps),
            "fault.inject_nonfinite_steps",
            self.inject_nonfinite_steps,
            "steps >= 1",
        )


WANDB_MODES = ("online", "offline")


@dataclass
class WandbConfig:
    """Weights & Biases: one W&B run per pretraining run (needs
    ``pip install 'lejepa-ray[tracking]'``)."""

    project: str | None = None
    """W&B project to log to; None: W&B is off."""
    mode: str = "online"
    """``online`` (needs ``WANDB_API_KEY`` or ``wandb login`` on every node) or ``offline``
    (files under the run directory's ``wandb/``, uploaded later with ``wandb sync``)."""

    def __post_init__(self) -> None:
        check_field(
            self.mode in WANDB_MODES, "logging.wandb.mode", self.mode, " or ".join(WANDB_MODES)
        )


@dataclass
class LoggingConfig:
    """Metrics to TensorBoard and ``metrics.jsonl`` (rank 0), a console progress line, and
    optionally MLflow and W&B (``lejepa_ray.train.tracking``)."""

    every_steps: int = 10
    """Log metrics every this many optimizer steps."""
    peak_tflops: float | None = None
    """Peak dense bf16 TFLOP/s of one device, for MFU. None: looked up from the GPU's name
    (H100, H200, A100, ...); CPUs have no MFU."""
    verbose: bool = False
    """Show Ray's own logs on the console too (driver INFO lines, placement groups, Ray Data
    plans, C++ notices). Off: our progress, warnings and errors only; Ray's logs stay in the
    session's log folder (/tmp/ray/session_latest/logs)."""
    rankme_samples: int = 512
    """At every checkpoint, RankMe (``lejepa_ray.train.rankme``, the effective rank of the
    embeddings; higher is better) of the backbone features and the projector outputs of this
    many fixed images the run does not train on (``data.split=val`` when it trains on
    ``train``); logged as ``rankme/backbone`` and ``rankme/projector``. 0: off."""
    progress_bar: bool = True
    """On a terminal, with a local run directory, a live progress bar (steps, pace, ETA, loss)
    in place of the progress lines. Into a file or a pipe the lines stay, whatever this says."""
    mlflow: str | None = None
    """MLflow tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``, ``file:./mlruns``):
    one MLflow run per pretraining run, with the same metrics as TensorBoard, the config as
    parameters and the probes (``pip install 'lejepa-ray[tracking]'``). None: off."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    group: str | None = None
    """Where the tracking run is filed: the MLflow experiment and the W&B group. None: the
    ``lejepa-ray`` experiment and no group; a sweep sets its own name, so that its trials sit
    together."""
    rankme_every_report: bool = False
    """RankMe at every report (each ``every_steps``), not only at checkpoints: what ASHA reads
    when a sweep stops trials by RankMe (the sweep turns it on then). Costs one forward pass of
    the ``rankme_samples`` images per report, logged as ``time/rankme_s``."""

    def __post_init__(self) -> None:
        if self.mlflow is not None:  # workers and trials run in other working directories
            self.mlflow = _absolute_uri(self.mlflow)
        check_field(self.every_steps >= 1, "logging.every_steps", self.every_steps, ">= 1")
        check_field(self.rankme_samples >= 0, "logging.rankme_samples", self.rankme_samples, ">= 0")
        check_field(
            self.rankme_samples > 0 or not self.rankme_every_report,
            "logging.rankme_every_report",
            self.rankme_every_report,
            "false when logging.rankme_samples is 0 (no batch to compute RankMe on)",
        )
        check_field(
            self.peak_tflops is None or self.peak_tflops > 0,
            "logging.peak_tflops",
            self.peak_tflops,
            "None or > 0",
        )


def _absolute_uri(uri: str) -> str:
    """A tracking URI every process reads the same: a relative SQLite file or folder made
    absolute; a server's URI as it is."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).absolute())
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return "file://" + str(Path(uri.removeprefix("file://").removeprefix("file:")).absolute())
    if ":" not in uri and not uri.startswith("databricks"):  # a bare folder
        return str(Path(uri).absolute())
    return uri
