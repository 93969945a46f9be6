"""The model's configuration (``model.*``) and how it is spread over workers (``scaling.*``).

``model.encoder`` builds the backbone and projector from :class:`ModelConfig`;
``model.parallelize`` lays it out on devices from :class:`ScalingConfig`, whose worker counts and
resources the launcher hands to Ray Train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lejepa_ray.errors import check_field

PROJECTOR_NORMS = ("batch", "layer", "none")
"""``model.projector_norm`` choices (``model.encoder.NORMS`` builds them)."""

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")


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
