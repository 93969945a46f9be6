"""The scale plan of a GPU config, computed on paper (no GPU needed): memory per GPU under
FSDP2 with and without activation checkpointing, model FLOPs per multi-crop image, images/s at
an assumed MFU, the time and GPU-hours of one ImageNet-1K epoch, and the CPU cores the views
need. docs/scaling.md explains each line; every figure here is computed, none is measured.

    python benchmarks/scale_plan.py --config jobs/configs/imagenet1k_vit_gigantic.yaml
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lejepa_ray.cluster import load_cluster, worker_types
from lejepa_ray.config import PretrainConfig, load_config
from lejepa_ray.data.batch_split import drawn_per_worker
from lejepa_ray.model.encoder import LeJEPAEncoder, resolve
from lejepa_ray.model.flops import PEAK_BF16_TFLOPS, train_flops_per_image

IMAGENET_TRAIN = 1_281_167
GB = 1e9


def _tokens(size: int, patch: int, prefix: int) -> int:
    side = -(-size // patch)  # local views are padded up to a patch multiple
    return side * side + prefix


@dataclass(frozen=True)
class Geometry:
    """What the memory estimate needs of a transformer encoder and its views."""

    params: int
    """Parameters of the encoder (backbone and projector)."""
    block_params: int
    """Parameters of one transformer block."""
    d: int
    """Width (embedding dimension)."""
    depth: int
    """Number of blocks."""
    mlp_ratio: float
    """MLP hidden width / d."""
    tokens: int
    """Tokens of one image over all its views (local views padded to a patch multiple)."""
    patch: int
    """Patch size in pixels."""

    @classmethod
    def of(cls, cfg: PretrainConfig) -> Geometry:
        """The encoder of ``cfg`` built on the meta device (no memory, about a second).

        Raises:
            ValueError: the backbone has no transformer ``blocks``.
        """
        v = cfg.data.views
        spec = resolve(cfg.model, v.global_size, v.local_size if v.local_views else None)
        encoder = LeJEPAEncoder(spec, cfg.model, device="meta")
        backbone = encoder.backbone
        blocks = getattr(backbone, "blocks", None)
        if blocks is None:
            raise ValueError("this plan models transformer blocks (backbone.blocks); got none")
        d = backbone.embed_dim
        patch = backbone.patch_embed.patch_size[0]
        prefix = getattr(backbone, "num_prefix_tokens", 1)
        tokens = v.global_views * _tokens(v.global_size, patch, prefix)
        tokens += v.local_views * _tokens(v.local_size, patch, prefix)
        return cls(
            params=sum(t.numel() for t in encoder.parameters()),
            block_params=sum(t.numel() for t in blocks[0].parameters()),
            d=d,
            depth=len(blocks),
            mlp_ratio=blocks[0].mlp.fc1.out_features / d,
            tokens=tokens,
            patch=patch,
        )


def memory_gb(g: Geometry, n: int, batch: int, fsdp: bool) -> dict[str, float]:
    """Estimated memory per GPU (GB) of ``n`` workers of ``batch`` images each.

    FSDP2 shards fp32 parameters, their fp32 gradients and AdamW's two fp32 moments over n
    ranks; a block's bf16 parameters are gathered for its forward and backward (the current
    one and the prefetched next), and its gradients are reduced in fp32. Under DDP every rank
    holds all of it, and there is nothing to gather. Activations kept for backward, bf16, per
    token per block: LN1 and its output, q, k, v, the attention output, LN2 and its output
    (2 bytes × 9 d), and the MLP's hidden layer before and after GELU (2 bytes × 2 × ratio ×
    d); flash attention keeps no t × t scores. Checkpointing keeps each block's input (2 d
    bytes a token) and recomputes one block at a time. The optimizer step comes after the
    activations are freed; it is counted as one more fp32 copy of the local parameters, what
    AdamW's ``foreach`` kernels allocate while they run (the default ``fused`` updates in place,
    so for it this is an upper bound): the peak is the larger of the two."""
    states = 16 * g.params / (n if fsdp else 1)
    gathered = g.block_params * (2 * 2 + 4) if fsdp else 0
    per_token_block = (18 + 4 * g.mlp_ratio) * g.d
    full = per_token_block * g.tokens * g.depth * batch
    checkpointed = (2 * g.d * g.depth + per_token_block) * g.tokens * batch
    step = 4 * g.params / (n if fsdp else 1)
    return {
        "states": states / GB,
        "gathered": gathered / GB,
        "activations": full / GB,
        "activations_checkpointed": checkpointed / GB,
        "optimizer_step": step / GB,
        "total": (states + gathered + max(full, step)) / GB,
        "total_checkpointed": (states + gathered + max(checkpointed, step)) / GB,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="jobs/configs/imagenet1k_vit_gigantic.yaml")
    p.add_argument("--cluster", default="cluster.yaml")
    p.add_argument("--node-type", default="gpu_8x_h100")
    p.add_argument("--gpu", default="H100", help="a key of lejepa_ray.model.flops.PEAK_BF16_TFLOPS")
    p.add_argument("--mfu", type=float, default=0.40, help="assumed model FLOPs utilization")
    p.add_argument(
        "--cpu-ms-per-image",
        type=float,
        default=25.0,
        help="one core's time to decode one image and make its views (docs/benchmarks.md "
        "data table: ~1 ms decode + 18-27 ms crops on the 2-core dev machine)",
    )
    p.add_argument(
        "--node-gbps",
        type=float,
        default=3200.0,
        help="inter-node network per node in Gbit/s (p5.48xlarge EFA: 3200)",
    )
    p.add_argument(
        "--link-efficiency",
        type=float,
        default=0.8,
        help="share of that bandwidth NCCL's collectives reach",
    )
    args = p.parse_args()

    cfg = load_config(args.config)
    s, v = cfg.scaling, cfg.data.views
    n = s.max_workers
    spec = resolve(cfg.model, v.global_size, v.local_size if v.local_views else None)
    try:
        g = Geometry.of(cfg)
    except ValueError as e:
        sys.exit(str(e))
    flops = train_flops_per_image(spec, cfg.model, v)
    peak = dict(PEAK_BF16_TFLOPS)[args.gpu] * 1e12

    print(
        f"{cfg.model.name}: {g.params / 1e9:.3f}B parameters ({g.depth} blocks of "
        f"{g.block_params / 1e6:.1f}M, width {g.d}, MLP ×{g.mlp_ratio:.2f}), {n} × {args.gpu}, "
        f"{s.strategy}, batch {s.batch_size}/GPU (global {s.global_batch})"
    )
    print(
        f"tokens per image: {g.tokens} ({v.global_views} × {v.global_size} px + "
        f"{v.local_views} × {v.local_size} px at patch {g.patch})"
    )

    fsdp = s.strategy == "fsdp"
    print(f"\nmemory per GPU (GB), {n} workers, {s.batch_size} images each:")
    _print_memory(memory_gb(g, n, s.batch_size, fsdp), n, fsdp)
    if s.elastic:  # the smallest group holds the most per GPU
        least, batch = s.min_workers, drawn_per_worker(s.global_batch, s.min_workers)
        print(f"\nthe elastic group at its smallest, {least} workers, {batch} images each:")
        _print_memory(memory_gb(g, least, batch, fsdp), least, fsdp)

    rate = args.mfu * peak * n / flops
    step_s = s.global_batch / rate
    steps = IMAGENET_TRAIN / s.global_batch
    epoch_s = IMAGENET_TRAIN / rate
    run_h = cfg.optim.steps * step_s / 3600
    print(f"\nmodel FLOPs per image (3 × forward of all views): {flops / 1e12:.2f} TFLOP")
    print(
        f"at {args.mfu:.0%} MFU of {peak / 1e12:.0f} TFLOP/s: {rate:,.0f} images/s, "
        f"{step_s:.2f} s per step"
    )
    print(
        f"one ImageNet-1K epoch ({steps:,.0f} steps): {epoch_s / 60:.1f} min, "
        f"{n * epoch_s / 3600:.1f} GPU-hours; the config's {cfg.optim.steps:,} steps: "
        f"{run_h:.1f} h, {n * run_h:,.0f} GPU-hours"
    )
    for mfu in (0.25, 0.35, 0.45):
        r = mfu * peak * n / flops
        print(f"  at {mfu:.0%} MFU: {r:,.0f} images/s, {IMAGENET_TRAIN / r / 60:.1f} min per epoch")

    # FSDP2 traffic per step and GPU (ring collectives move (n-1)/n of the full size): the bf16
    # parameters are all-gathered for the forward and again for the backward (blocks reshard
    # after forward), and the gradients reduce-scattered in fp32. DDP all-reduces fp32
    # gradients (2 × (n-1)/n). Across nodes each GPU gets its share of the node's network.
    node = next(t for t in worker_types(load_cluster(args.cluster)) if t.name == args.node_type)
    if n > node.gpus:
        volume = (2 * 2 + 4) * g.params if fsdp else 2 * 4 * g.params
        volume *= (n - 1) / n
        per_gpu = args.node_gbps / 8 * 1e9 / node.gpus * args.link_efficiency
        comm = volume / per_gpu
        print(
            f"\ncommunication per step: {volume / GB:.1f} GB per GPU over "
            f"{per_gpu / GB:.0f} GB/s = {comm:.2f} s, against {step_s:.2f} s of compute per "
            f"step at {args.mfu:.0%} MFU (FSDP2 overlaps the two; {comm / step_s:.0%} of it)"
        )
    nodes = -(-n // node.gpus)
    spare = nodes * (node.cpus - node.gpus * s.cpus_per_worker)
    need = rate * args.cpu_ms_per_image / 1000
    print(
        f"\nviews: {rate:,.0f} images/s × {args.cpu_ms_per_image:g} ms = {need:,.0f} cores "
        f"busy; {nodes} × {node.name} keep {spare:g} vCPUs beside the training workers "
        f"({node.cpus:g} each, {s.cpus_per_worker:g} per worker)"
    )


def _print_memory(gb: dict[str, float], n: int, fsdp: bool) -> None:
    how = f"sharded {n} ways" if fsdp else "replicated (DDP)"
    print(f"  parameters + gradients + AdamW (fp32, {how}): {gb['states']:7.2f}")
    print(f"  gathered bf16 block parameters and fp32 block gradients:  {gb['gathered']:7.2f}")
    print(
        f"  activations, no checkpointing:    {gb['activations']:7.2f}  -> total {gb['total']:6.1f}"
    )
    print(
        f"  activations, block checkpointing: {gb['activations_checkpointed']:7.2f}  -> total "
        f"{gb['total_checkpointed']:6.1f}"
    )
    print(f"  AdamW's step after backward (at most, foreach's copy): {gb['optimizer_step']:7.2f}")
    print("  (plus the CUDA context, cuBLAS/NCCL workspaces and allocator slack: a few GB)")


if __name__ == "__main__":
    main()
