"""Spread the encoder over the data-parallel ranks: DDP, or FSDP2 ``fully_shard`` per block.

Order (as in torchtitan): activation checkpointing, then ``torch.compile`` per block, then
sharding (each block, then the root). Under FSDP a large model is created with its parameters
on the meta device, sharded while still empty, and only then materialized: each rank allocates
and initializes its own shards, so no process ever holds the whole model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.nn.parallel import DistributedDataParallel

from lejepa_ray import compat
from lejepa_ray.errors import ConfigError
from lejepa_ray.model.config import ScalingConfig
from lejepa_ray.model.encoder import LeJEPAEncoder


def compute_dtype(scaling: ScalingConfig, device: torch.device) -> torch.dtype:
    """bf16 when asked, or by default on GPU; fp32 otherwise."""
    if scaling.precision == "bf16" or (scaling.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def block_modules(backbone: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a timm backbone, deepest first.

    timm describes every architecture's blocks for layer-wise learning rates
    (``group_matcher(coarse=False)``); each group's block is the deepest module holding all of
    the group's layers. Top-level layers that timm adds to a group (the final norm joins the
    last block) are left to the root, and so are groups made only of them (a ResNet stem).
    """
    # lazy: timm takes about a second to import; only finding a backbone's blocks needs it.
    from timm.models import group_modules

    matcher = getattr(backbone, "group_matcher", None)
    if not callable(matcher):
        return []
    groups = group_modules(backbone, matcher(coarse=False))
    names: set[str] = set()
    for members in groups.values():
        parts = [name.split(".") for name in members if "." in name]
        common: list[str] = []
        for level in zip(*parts, strict=False):
            if len(set(level)) != 1:
                break
            common.append(level[0])
        if common:
            names.add(".".join(common))
    modules = dict(backbone.named_modules())
    return [modules[n] for n in sorted(names, key=lambda n: (-n.count("."), n)) if n in modules]


def parallelize(
    model: LeJEPAEncoder, scaling: ScalingConfig, device: torch.device, *, seed: int = 0
) -> nn.Module:
    """Apply activation checkpointing, per-block compile and DDP or FSDP2 to ``model``.

    ``model`` may hold meta parameters under FSDP (see ``ModelConfig.meta_init``); they are
    materialized on ``device`` after sharding and initialized with ``seed``. Returns the module
    to train (the DDP wrapper, or ``model`` itself sharded in place).
    """
    dtype = compute_dtype(scaling, device)
    if scaling.activation_checkpointing:
        set_grad_checkpointing = getattr(model.backbone, "set_grad_checkpointing", None)
        if not callable(set_grad_checkpointing):
            raise ConfigError(
                f"{type(model.backbone).__name__} has no set_grad_checkpointing(): set "
                "scaling.activation_checkpointing=false for this backbone."
            )
        set_grad_checkpointing(True)
    blocks = block_modules(model.backbone)
    if scaling.compile:
        # Up to two graphs (two view sizes) per block shape, all in the blocks' shared code.
        compat.raise_recompile_limit(2 * len(blocks) + 2)
        for block in blocks:
            # Static shapes: global and local views reach each block at two sizes, and after
            # the second one dynamo would retrace with symbolic sizes, which inductor fails on
            # for some blocks (resnet10t's average-pool downsample: "Cannot convert
            # expression to float"). Two static graphs per block shape are cheap.
            block.compile(dynamic=False)
    if scaling.strategy == "fsdp":
        return _fully_shard(model, blocks, device, dtype, seed)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("DDP needs a materialized model; build it on the device, not on meta.")
    model.to(device)
    if not (dist.is_available() and dist.is_initialized()):
        return model

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _fully_shard(
    model: LeJEPAEncoder,
    blocks: list[nn.Module],
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
) -> nn.Module:
    world = dist.get_world_size() if dist.is_initialized() else 1
    mesh = init_device_mesh(device.type, (world,))
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=_policy(block, dtype))
    fully_shard(model, mesh=mesh, mp_policy=_policy(model, dtype))
    # RankMe embeds through this method, not forward: FSDP2 must gather the root's parameters
    # (stem, head, projector) for it too.
    register_fsdp_forward_method(model, "embeddings")
    if any(p.is_meta for p in model.parameters()):
        materialize(model, device, seed)
    return model


def _policy(unit: nn.Module, dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16 parameters (gathered and computed in bf16, gradients reduced in fp32), except for
    units holding BatchNorm: its bf16 weights cannot meet its fp32 running statistics, so such
    units keep fp32 parameters and compute in bf16 through autocast (see ``Trainer``)."""
    if dtype == torch.float32 or _holds_batchnorm(unit, FSDPModule):
        return MixedPrecisionPolicy(reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def _holds_batchnorm(unit: nn.Module, sharded: type) -> bool:
    """Whether ``unit`` itself (not a nested, already sharded unit) has a BatchNorm layer."""
    for child in unit.children():
        if isinstance(child, sharded):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm) or _holds_batchnorm(child, sharded):
            return True
    return False


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate meta parameters on ``device`` (only the local shards of sharded ones) and
    initialize them as timm would.

    Buffers and small parameters were built for real (``meta_parameters``) and are kept.
    Initialization: ``reset_parameters()`` of every layer that has one, then the model's own
    ``init_weights()`` where timm provides one (ViTs, ResNets, ...); a small parameter that
    neither touches keeps the value ``__init__`` gave it. Every parameter is NaN before and
    checked after, so a parameter nothing initialized is an error, never silent garbage.
    """
    kept = {
        name: _local(p).detach().clone() for name, p in model.named_parameters() if not p.is_meta
    }
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, b in model.named_buffers():
        b.copy_(buffers[name])
    for p in model.parameters():
        p.fill_(float("nan"))
    # On CPU meshes DTensor initializes each local shard with the process's own generator;
    # seeding per rank keeps the shards of one tensor from being copies of each other. (On GPU,
    # DTensor's own tracker makes sharded init equal the unsharded one.)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(seed + 7919 * rank)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "DTensor random operators may not have complete")
        _initialize(model)
    # What was built for real keeps its value unless an initializer set it just now.
    for name, p in model.named_parameters():
        local = _local(p)
        if name in kept and not bool(torch.isfinite(local).all()):
            local.copy_(kept[name])
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(_local(p)).all())]
    if bad:
        raise RuntimeError(
            f"meta-device initialization left {len(bad)} parameter(s) uninitialized "
            f"({', '.join(bad[:5])}): their layers have no reset_parameters()/init_weights(). "
            "Set model.meta_init=false to build the model on the device instead."
        )


def _initialize(model: nn.Module) -> None:
    # Layer defaults first, as at construction; then the model-level schemes on top, outermost
    # first (timm's init_weights recurse into their children themselves).
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    covered: set[int] = set()
    for module in model.modules():
        init = getattr(module, "init_weights", None)
        if id(module) in covered or not callable(init):
            continue
        init()
        covered.update(id(m) for m in module.modules())


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


# Parameters up to this many elements are created for real by ``meta_parameters``: biases,
# norm scales, layer-scale gammas and tokens that some layers set in ``__init__`` and never
# again. All of them together are a few MB even for ViT-gigantic.
SMALL_PARAMETER = 1 << 16


@contextlib.contextmanager
def meta_parameters(small: int = SMALL_PARAMETER) -> Iterator[None]:
    """Context in which modules get meta parameters, except small ones, and real buffers.

    Buffers (relative-position indices...) and small parameters (layer-scale gammas...) are
    computed in ``__init__`` and not always re-derived by ``reset_parameters``, so they stay
    real; the large weights are left empty until :func:`materialize` creates each rank's
    shard of them.
    """

    def to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        """torch's global hook, run by every ``register_parameter``: what it returns replaces the
        parameter (None keeps it)."""
        if param is not None and param.numel() > small and not param.is_meta:
            return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        return None

    # torch annotates the hook as returning None, though its docstring and register_parameter
    # take the parameter it returns.
    handle = register_module_parameter_registration_hook(to_meta)  # type: ignore[arg-type]
    try:
        yield
    finally:
        handle.remove()
