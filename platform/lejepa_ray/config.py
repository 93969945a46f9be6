"""Typed configuration of a pretraining run: one dataclass per component, YAML files, overrides.

A run's config is the defaults below, then a YAML file (``--config``), then dotted overrides
(the command line's flags ``--model.name vit_small_patch16_224 --loss.lam 0.02``; the API's
``{"loss.lam": 0.02}`` or ``["loss.lam=0.02"]``), merged by
OmegaConf against these dataclasses: unknown keys and wrongly typed values fail with the key's
full name. Each dataclass then checks its own ranges, and :func:`check_run` checks what spans
components (sizes the model accepts, batch against workers, the timm name), all in the driver
before any Ray resource is requested.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lejepa_ray.data.config import DataConfig, ViewConfig, check_field
from lejepa_ray.data.source import get_source
from lejepa_ray.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf.errors import OmegaConfBaseException

STORAGE_ENV = "LEJEPA_STORAGE_PATH"
"""Environment variable with the default ``storage_path`` (set by ``cluster.yaml``)."""

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")


PROJECTOR_NORMS = ("batch", "layer", "none")
"""``model.projector_norm`` choices (``model.encoder.NORMS`` builds them)."""


@dataclass
class ModelConfig:
    """The encoder (any timm backbone) and the projector the loss is computed on."""

    name: str = "resnet18"
    """timm architecture name (``timm.list_models()``), built with ``pretrained=False`` and
    ``num_classes=0`` so it returns pooled features."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``timm.create_model`` (e.g. ``{drop_path_rate: 0.1}``)."""
    projector_hidden: int = 2048
    """Width of the projector's hidden layers (the LeJEPA recipe: 2048)."""
    projector_dim: int = 128
    """Output size of the projector: the embedding dimension SIGReg and the prediction loss
    see."""
    projector_layers: int = 3
    """Linear layers in the projector (hidden ones are followed by ``projector_norm`` and
    ReLU)."""
    projector_norm: str = "batch"
    """The normalization after each hidden layer of the projector: ``batch`` (BatchNorm, the
    LeJEPA recipe), ``layer`` (LayerNorm) or ``none``."""
    meta_init: bool = True
    """Under FSDP, create the parameters on the meta device and materialize only each rank's
    shards, so no process ever holds the whole model. Ignored under DDP."""

    def __post_init__(self) -> None:
        check_field(bool(self.name), "model.name", self.name, "a timm architecture name")
        check_field(
            self.projector_hidden >= 1, "model.projector_hidden", self.projector_hidden, ">= 1"
        )
        check_field(self.projector_dim >= 1, "model.projector_dim", self.projector_dim, ">= 1")
        check_field(
            self.projector_layers >= 1,
            "model.projector_layers",
            self.projector_layers,
            ">= 1 (1 is a single linear map)",
        )
        check_field(
            self.projector_norm in PROJECTOR_NORMS,
            "model.projector_norm",
            self.projector_norm,
            f"one of {', '.join(PROJECTOR_NORMS)}",
        )
        for key in ("pretrained", "num_classes", "device"):
            check_field(
                key not in self.model_args,
                f"model.model_args.{key}",
                self.model_args.get(key),
                "unset: the platform sets it",
            )


@dataclass
class LossConfig:
    """The LeJEPA objective: (1 − λ)·prediction + λ·SIGReg."""

    lam: float = 0.05
    """Trade-off λ in (0, 1), the weight of SIGReg (the paper's default: 0.05)."""
    num_slices: int = 1024
    """Random 1-D projections SIGReg tests per step."""
    t_max: float = 3.0
    """Half-width of the Epps-Pulley integration interval."""
    num_knots: int = 17
    """Odd number of quadrature knots on [0, t_max]."""
    alpha: float = 0.4
    """Exponent α of the label-free selection score loss / λ^α."""
    score_smoothing_steps: int = 50
    """``loss/smoothed`` and ``selection_score/smoothed`` (what sweeps rank trials by) average
    the last this many optimizer steps (whole logging windows, so a few more)."""

    def __post_init__(self) -> None:
        check_field(
            0 < self.lam < 1, "loss.lam", self.lam, "a value in (0, 1); the paper uses 0.05"
        )
        check_field(self.num_slices >= 1, "loss.num_slices", self.num_slices, ">= 1 (default 1024)")
        check_field(self.t_max > 0, "loss.t_max", self.t_max, "> 0 (default 3.0)")
        check_field(
            self.num_knots >= 3 and self.num_knots % 2 == 1,
            "loss.num_knots",
            self.num_knots,
            "an odd integer >= 3 (default 17)",
        )
        check_field(self.alpha >= 0, "loss.alpha", self.alpha, ">= 0 (default 0.4)")
        check_field(
            self.score_smoothing_steps >= 1,
            "loss.score_smoothing_steps",
            self.score_smoothing_steps,
            ">= 1 (default 50)",
        )


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
class ScalingConfig:
    """How many Ray Train workers, on what, and how the model is spread over them."""

    num_workers: Any = 2
    """Ray Train workers (data-parallel ranks): a number, or ``[min, max]`` for an elastic
    group that starts once ``min`` workers fit and grows to ``max`` as slots free up (Ray
    Train's elastic scaling; docs/training.md, "Elastic runs")."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker also reserves, e.g. ``{spot_slot: 1}``: training runs
    only where nodes advertise them (CPU and GPU are set by the fields around this one)."""
    resize_check_s: float = 60.0
    """An elastic group looks for more free slots this often, in seconds (Ray Train's
    ``elastic_resize_monitor_interval_s``); a lost worker is replaced at once."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); otherwise CPU workers (gloo)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each training worker reserves."""
    batch_size: int = 64
    """Images per worker per micro-batch (each image brings all its views)."""
    strategy: str = "ddp"
    """``ddp`` (replicated model) or ``fsdp`` (FSDP2 ``fully_shard`` per block, then the
    root)."""
    precision: str = "auto"
    """``bf16`` (parameters and compute in bf16 with fp32 gradient reduction under FSDP,
    autocast under DDP), ``fp32``, or ``auto``: bf16 on GPU, fp32 on CPU."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward (timm's grad checkpointing)."""
    compile: bool = False
    """``torch.compile`` each block."""

    def __post_init__(self) -> None:
        self.num_workers = _worker_range(self.num_workers)
        check_field(self.resize_check_s >= 0, "scaling.resize_check_s", self.resize_check_s, ">= 0")
        for name, amount in self.resources.items():
            check_field(
                name not in ("CPU", "GPU") and amount > 0,
                f"scaling.resources.{name}",
                amount,
                "a custom resource (CPU and GPU have their own fields) with an amount > 0",
            )
        check_field(
            self.cpus_per_worker > 0, "scaling.cpus_per_worker", self.cpus_per_worker, "> 0"
        )
        check_field(self.batch_size >= 1, "scaling.batch_size", self.batch_size, ">= 1")
        check_field(
            self.strategy in STRATEGIES,
            "scaling.strategy",
            self.strategy,
            f"one of {', '.join(STRATEGIES)}",
        )
        check_field(
            self.precision in PRECISIONS,
            "scaling.precision",
            self.precision,
            f"one of {', '.join(PRECISIONS)}",
        )

    @property
    def min_workers(self) -> int:
        """The fewest workers training runs with (``num_workers`` when it is a number)."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        """The most workers training runs with: what a run asks the cluster for."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    @property
    def elastic(self) -> bool:
        """Whether the worker group may change size during the run."""
        return self.min_workers != self.max_workers

    @property
    def global_batch(self) -> int:
        """Images per micro-batch across all workers: ``batch_size × max_workers``, whatever
        the group's size at the moment."""
        return self.batch_size * self.max_workers

    def batch_split(self, world_size: int) -> list[int]:
        """Images each rank of a group of ``world_size`` workers trains on per micro-batch, by
        rank: they sum to :attr:`global_batch` and differ by at most one (the larger first).

        The rule of elastic runs: the global batch stays ``batch_size × max_workers`` at every
        size, so the learning rate, its schedule and SIGReg's N do not change on a resize; each
        of ``w`` workers takes ``global_batch / w`` images, rounded up for the first
        ``global_batch mod w`` ranks and down for the others. Every rank draws the larger count
        from the data stream (:meth:`drawn_per_worker`) so that all ranks go through their
        equal shards in step, and the others leave their last image out of the step."""
        if not self.min_workers <= world_size <= self.max_workers:
            raise ValueError(f"world size {world_size} outside {self.num_workers}")
        base, extra = divmod(self.global_batch, world_size)
        return [base + (rank < extra) for rank in range(world_size)]

    def drawn_per_worker(self, world_size: int) -> int:
        """Rows each rank takes from the data stream per micro-batch: the largest share of
        :meth:`batch_split` (``ceil(global_batch / world_size)``)."""
        return self.batch_split(world_size)[0]

    def batch_share(self, rank: int, world_size: int) -> float:
        """``rank``'s images per micro-batch × ``world_size`` / :attr:`global_batch`: 1 on an
        even split, slightly above or below it on an uneven one. Weighting a rank's per-sample
        mean loss by it makes data-parallel gradient averaging the global batch's mean."""
        return self.batch_split(world_size)[rank] * world_size / self.global_batch


def _worker_range(value: Any) -> int | list[int]:
    """``num_workers`` as an int, or as ``[min, max]`` when it is a range of two sizes (a list,
    not a tuple: OmegaConf would type the field as a tuple from then on)."""
    expected = "a number of workers >= 1, or [min, max] with 1 <= min <= max"
    if isinstance(value, bool):
        check_field(False, "scaling.num_workers", value, expected)
    if isinstance(value, int):
        check_field(value >= 1, "scaling.num_workers", value, expected)
        return value
    items = list(value) if isinstance(value, (list, tuple)) else []
    ok = (
        len(items) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in items)
        and 1 <= items[0] <= items[1]
    )
    check_field(ok, "scaling.num_workers", value, expected)
    low, high = items
    return low if low == high else [low, high]


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


@dataclass
class ProbeConfig:
    """The probes run after training, on labelled data of the training source, and, with
    ``every_steps``, on checkpoints during training (``lejepa_ray.launch.probes``).

    Protocol: with ``data.split=train`` the probes are fitted on that split and scored on
    ``data.split=val`` of the same source, images the run never trained on. Otherwise they are
    fitted and scored on a hash 80/20 split of the training data
    (``lejepa_ray.evaluation.probe``)."""

    knn: bool = True
    """Probe the final backbone after training (needs a labelled source); false: no probes
    after training (``every_steps`` still probes during it)."""
    linear: bool = True
    """Also fit the linear probe (logistic regression) beside the kNN one."""
    baseline: bool = True
    """Also probe raw pixels on the same split: the figure to beat."""
    k: int = 20
    """Neighbours voting."""
    temperature: float = 0.07
    """Votes are weighted by exp(cosine similarity / temperature)."""
    max_samples: int = 5000
    """Use at most this many labelled images from each of the bank's and the queries' data."""
    every_steps: int = 0
    """Also probe during training: the checkpoint of every N-th step (a multiple of
    ``checkpoint.every_steps``), in a Ray task of its own while the workers train on; results
    go to TensorBoard at the checkpoint's step and to its metrics. 0: only after training."""
    data: str | None = None
    """Labelled data the probes during training fit on, as ``lejepa-ray eval --data`` takes it
    (``digits:train``, an image folder, parquet shards). None: the protocol above, on the
    training source."""
    val_data: str | None = None
    """Labelled data they are scored on (``digits:val``); None: a hash split of ``data``."""
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    """What each probe task reserves: ``CPU``, ``GPU`` (the probe then runs on it) and any
    custom Ray resource."""
    timeout_s: float = 0.0
    """A probe during training still running after this many seconds is cancelled (recorded
    by Ray as timed out); 0: no limit. Ray runs one probe at a time and, when training ends,
    waits for the ones queued: bound them here when probes are slower than ``every_steps``."""

    def __post_init__(self) -> None:
        check_field(self.every_steps >= 0, "probe.every_steps", self.every_steps, ">= 0")
        check_field(self.timeout_s >= 0, "probe.timeout_s", self.timeout_s, ">= 0 (0: no limit)")
        check_field(
            bool(self.resources) and all(v >= 0 for v in self.resources.values()),
            "probe.resources",
            self.resources,
            "amounts >= 0 of CPU, GPU or custom resources, e.g. {CPU: 1}",
        )
        check_field(
            self.val_data is None or self.data is not None,
            "probe.val_data",
            self.val_data,
            "unset unless probe.data is set (the bank it is scored against)",
        )
        check_field(self.k >= 1, "probe.k", self.k, ">= 1")
        check_field(self.temperature > 0, "probe.temperature", self.temperature, "> 0")
        check_field(self.max_samples >= 10, "probe.max_samples", self.max_samples, ">= 10")


@dataclass
class PretrainConfig:
    """A whole LeJEPA pretraining run."""

    name: str | None = None
    """Run name: the directory under ``storage_path``. None: ``lejepa-<model>-<timestamp>``."""
    storage_path: str = field(default_factory=lambda: os.environ.get(STORAGE_ENV) or "runs")
    """Where run directories go: a local path (made absolute) or a URI (s3://...). Default:
    ``$LEJEPA_STORAGE_PATH`` (which ``cluster.yaml`` sets on every node, so jobs write to the
    cluster's bucket), else ``runs``."""
    seed: int = 0
    """Seed of model initialization (the data has its own ``data.seed``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        if self.name is not None:
            check_field(
                bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                "name",
                self.name,
                "a directory name without '/'",
            )


def _omegaconf():
    """OmegaConf, imported where a config is read or written and nowhere else: the schema above
    is what the trainer, the model and the GPU check import, and they must run without it."""
    # lazy: keeps OmegaConf off the Ray-free core (see the docstring).
    from omegaconf import OmegaConf

    return OmegaConf


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides, validated.

    Raises:
        ConfigError: a missing file, a file that is not a YAML mapping, an unknown key, a
            wrongly typed or out-of-range value.
    """
    path = None if path is None else Path(path)
    return _merge(_layers(path), overrides, path)


def _layers(path: Path | None) -> list:
    """The defaults, then the YAML file at ``path`` when there is one, as OmegaConf layers."""
    omegaconf = _omegaconf()
    layers = [omegaconf.structured(PretrainConfig)]
    if path is not None:
        layers.append(omegaconf.create(read_yaml_mapping(path)))
    return layers


# The default of `pretrain` and `sweep` (CLI and API): the CPU quickstart, package data
# (lejepa_ray/configs/, pyproject.toml's package-data), so an installed wheel has it as well as
# a checkout. A regular package's resources are files on disk, so this is a plain path.
QUICKSTART = Path(str(resources.files("lejepa_ray") / "configs" / "quickstart.yaml"))


def default_config() -> Path:
    """The packaged quickstart config, or a ConfigError saying what to pass instead."""
    if not QUICKSTART.is_file():
        raise ConfigError(
            f"no config given and the packaged default config {QUICKSTART} is missing "
            "(an incomplete install of lejepa-ray: reinstall it); pass a config file, "
            "e.g. one of the repository's jobs/configs/*.yaml."
        )
    return QUICKSTART


Overrides = Sequence[str] | Mapping[str, Any]
"""Dotted overrides: ``["loss.lam=0.02"]`` or ``{"loss.lam": 0.02}``."""


def resolve_config(
    config: PretrainConfig | str | Path | None = None, overrides: Overrides = ()
) -> PretrainConfig:
    """A run's config from a config object, a YAML file (None: the packaged quickstart) and
    overrides, validated as :func:`load_config` does.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    dotted = dotlist(overrides)
    if isinstance(config, PretrainConfig):
        return with_overrides(config, dotted)
    return load_config(default_config() if config is None else config, dotted)


def dotlist(overrides: Overrides) -> list[str]:
    """``key=value`` strings from either form of :data:`Overrides`; a mapping's values are
    written as YAML flow values, so lists and mappings keep their types."""
    if not isinstance(overrides, Mapping):
        return list(overrides)
    # lazy: PyYAML comes with OmegaConf, which the core does not need.
    import yaml

    def flow(value: Any) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif hasattr(value, "item") and not isinstance(value, (list, dict)):  # numpy scalars
            value = value.item()
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
        return text.removesuffix("\n...").strip()

    return [f"{key}={'null' if value is None else flow(value)}" for key, value in overrides.items()]


def config_values(path: str | Path | None) -> dict[str, Any]:
    """Every key of a config as a nested dict: the defaults, then the YAML file at ``path``,
    checked for unknown keys and types but not for ranges, which :func:`config_from_mapping`
    checks once the command line's flags are on top.

    Raises:
        ConfigError: as :func:`load_config`, less the range checks.
    """
    # lazy: see _omegaconf.
    from omegaconf.errors import OmegaConfBaseException

    omegaconf = _omegaconf()
    path = None if path is None else Path(path)
    layers = _layers(path)
    try:
        values = omegaconf.to_container(omegaconf.merge(*layers), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, path)) from None
    assert isinstance(values, dict)
    return values


def config_from_mapping(values: Mapping[str, Any]) -> PretrainConfig:
    """A config from a nested mapping of every key (what the command line parses), validated
    as :func:`load_config` does.

    Raises:
        ConfigError: an unknown key, a wrongly typed or out-of-range value.
    """
    return _merge([*_layers(None), _omegaconf().create(dict(values))], (), None)


def read_yaml_mapping(path: Path) -> dict:
    """The YAML mapping in the file at ``path`` ({} for an empty file).

    Raises:
        ConfigError: the file is missing, is not text, is not YAML, or holds something other
            than a mapping of keys (a list, a line of text).
    """
    # lazy: PyYAML comes with OmegaConf, which the core does not need.
    import yaml

    hint = "pass a YAML file of config keys such as the repository's jobs/configs/*.yaml."
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; {hint}")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a text file; {hint}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {str(path)!r} is not a YAML mapping of config keys (it holds a "
            f"{type(raw).__name__}); {hint}"
        )
    return raw


def with_overrides(cfg: PretrainConfig, overrides: list[str] | tuple[str, ...]) -> PretrainConfig:
    """``cfg`` with ``key=value`` overrides applied, validated as :func:`load_config` does.

    Raises:
        ConfigError: an unknown key, a wrongly typed or out-of-range value.
    """
    return _merge([_omegaconf().structured(cfg)], overrides, None)


def _merge(
    layers: list, overrides: list[str] | tuple[str, ...], path: Path | None
) -> PretrainConfig:
    # lazy: see _omegaconf.
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value; write e.g. loss.lam=0.02.")
    omegaconf = _omegaconf()
    layers.append(omegaconf.from_dotlist(list(overrides)))
    try:
        merged = omegaconf.merge(*layers)
        cfg = omegaconf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, path)) from None
    except ValueError as e:  # a dataclass's own range check
        raise ConfigError(str(e)) from None
    assert isinstance(cfg, PretrainConfig)
    return cfg


def _describe(error: OmegaConfBaseException, path: Path | None) -> str:
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    where = f" (in {path} or the overrides)" if path else ""
    if key:
        return f"config key {key!r}: {message}{where}"
    return f"invalid config{where}: {message}"


def to_yaml(cfg: PretrainConfig) -> str:
    """The full merged config as YAML (what a run directory's ``config.yaml`` holds)."""
    omegaconf = _omegaconf()
    return omegaconf.to_yaml(omegaconf.structured(cfg))


PLACEHOLDER = "CHANGE-ME"
"""What the shipped recipes and cluster.yaml write where a user's bucket goes."""


def check_run(cfg: PretrainConfig) -> None:
    """Checks that span components; cheap (seconds) and run before Ray starts.

    Raises:
        ConfigError: a recipe's placeholder left in a path, an unknown timm name (with close
            matches), a batch SIGReg cannot test, or view sizes the model cannot take.
    """
    for key, value in (("data.path", cfg.data.path), ("storage_path", cfg.storage_path)):
        if value and PLACEHOLDER in value:
            raise ConfigError(
                f"{key}={value!r} is the recipe's placeholder: set {key} to your own location "
                f"(e.g. --{key} s3://my-bucket/"
                f"{value.split(PLACEHOLDER, 1)[1].strip('/') or '...'})."
            )
    check_model_name(cfg.model.name)
    if cfg.scaling.global_batch < 2:
        raise ConfigError(
            f"scaling.batch_size={cfg.scaling.batch_size} × {cfg.scaling.max_workers} "
            f"worker(s) gives {cfg.scaling.global_batch} image per step; "
            "SIGReg tests the distribution of the batch and needs at least 2 (use >= 64)."
        )
    every, saves = cfg.probe.every_steps, cfg.checkpoint.every_steps
    if every and every % saves:
        raise ConfigError(
            f"probe.every_steps={every} is not a multiple of checkpoint.every_steps={saves}; "
            f"the probes during training run on checkpoints. Use probe.every_steps="
            f"{(every // saves + 1) * saves}."
        )
    views: ViewConfig = cfg.data.views
    if views.local_views and views.local_size > views.global_size:
        raise ConfigError(
            f"data.views.local_size={views.local_size} is larger than data.views.global_size="
            f"{views.global_size}; local views are the small crops."
        )
    if get_source(cfg.data.source).generated and cfg.data.num_samples is not None:
        for workers in range(cfg.scaling.min_workers, cfg.scaling.max_workers + 1):
            per_worker = cfg.data.num_samples // workers
            batch = cfg.scaling.drawn_per_worker(workers)
            if per_worker < batch:
                raise ConfigError(
                    f"data.num_samples={cfg.data.num_samples} split over {workers} workers "
                    f"gives {per_worker} images each, fewer than their batch of {batch}: no "
                    "full batch. Lower scaling.batch_size or add samples."
                )


def check_model_name(name: str) -> None:
    """Raise ConfigError for a name timm does not know, suggesting close matches."""
    # lazy: timm takes about a second to import; only checking a model name needs it.
    import timm

    if timm.is_model(name):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"model.name={name!r} is not a timm architecture.{hint} "
        "`python -c \"import timm; print(timm.list_models('vit_*'))\"` lists the names."
    )


def scaled_lr(cfg: PretrainConfig) -> float:
    """Peak learning rate for the run's global batch (linear scaling from the reference)."""
    batch = cfg.scaling.global_batch * cfg.optim.accum_steps
    return cfg.optim.lr * batch / cfg.optim.lr_reference_batch
