"""One GPU check: the GPU path of lejepa-ray measured in minutes, on a machine lent for minutes.

Each check runs in a process of its own (a fresh CUDA context, its own peak memory, and a
crash or a hang that costs that check only), one after another under one time budget, and
prints one line; the last line is one JSON object with every figure.

- ``environment``: torch, CUDA, nccl, timm and Ray versions, the device, and the peak bf16
  FLOP/s the project assumes for it (``lejepa_ray.model.flops.PEAK_BF16_TFLOPS``).
- ``sigreg``: forward+backward of ours against the textbook implementation
  (``benchmarks/sigreg.py``) at its three sizes and at (N, D, slices) = (8192, 2048, 1024):
  time, peak memory, and how far the two agree.
- ``vit_l`` and ``vit_l_compiled``: LeJEPA steps of the ViT-L/14 recipe on one GPU (2 × 224 +
  8 × 96 views, bf16 autocast, 64 images): first-step time (compilation), steady step time,
  images/s, MFU, peak memory; without and with ``torch.compile``.
- ``imagenette_vits``: LeJEPA steps of the Imagenette ViT-S/8 recipe (MINIMAL.md's: 4 × 128 px
  views, 256 images, bf16 autocast): step time and images/s, from which docs/training.md gives
  the recipe's wall time on one GPU.
- ``gigantic_fsdp``: the ViT-gigantic/14 recipe under FSDP2 on a world of one (``fully_shard``,
  bf16 parameters with fp32 reduction, activation checkpointing): build on meta and
  materialize, steps at the recipe's 16 images per GPU, MFU, peak memory against
  ``benchmarks/scale_plan.py``'s estimate, and SIGReg's share of the step.
- ``device_views``: views/s of ``data.augment_on=device``'s photometric ops on the GPU.
- ``data_stream``: the ViT-L step fed by a Ray Data stream of generated images (data wait
  share); only where Ray imports.
- ``nccl_pair``: two ranks (only with 2+ GPUs): SIGReg's exactness across ranks with unequal
  shards, one DDP and one FSDP2 step.

``--dry-run`` runs every check at toy sizes on the CPU (gloo for the two-rank one), so that the
script is exercised by ``make test`` long before a GPU is at hand.

    python benchmarks/gpu_check.py [--dry-run] [--only sigreg,vit_l] [--budget-s 480]

On the GPU machine (no Ray, no OmegaConf: the checks import only Ray-free modules, and the
configs are read with PyYAML), from the repository root: docs/scaling.md, "The GPU check".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "benchmarks")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from scale_plan import Geometry, memory_gb  # noqa: E402

from lejepa_ray.compat import compiled_graphs  # noqa: E402
from lejepa_ray.config import (  # noqa: E402
    LossConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    ScalingConfig,
)
from lejepa_ray.data.batch_split import batch_share, batch_split  # noqa: E402
from lejepa_ray.data.config import DataConfig, ViewConfig  # noqa: E402
from lejepa_ray.model.encoder import resolve_backbone  # noqa: E402
from lejepa_ray.model.flops import peak_tflops, train_flops_per_image  # noqa: E402
from lejepa_ray.model.parallelize import compute_dtype  # noqa: E402
from lejepa_ray.train.trainer import Trainer  # noqa: E402

RESULT = "GPU_CHECK_RESULT "
"""Prefix of the one line a check's process prints its figures on."""


@dataclass(frozen=True)
class Sizes:
    """How big each check is: the real thing on a GPU, toys for ``--dry-run``."""

    sigreg: list[tuple[int, int, int]]
    """(N, D, slices) of each SIGReg case."""
    repeats: int
    """Timed repetitions (after warm-up) of each timed operation."""
    vit_l: dict[str, dict[str, Any]]
    """Config overrides of the ViT-L recipe, by section."""
    gigantic: dict[str, dict[str, Any]]
    """Config overrides of the ViT-gigantic recipe, by section."""
    imagenette: dict[str, dict[str, Any]]
    """Config overrides of the Imagenette ViT-S/8 recipe, by section."""
    views_batch: int
    """Samples per batch of the device views."""
    stream_steps: int
    """Timed steps fed by the Ray Data stream."""
    timeouts: dict[str, float] = field(default_factory=dict)
    """Seconds each check may take at most (the budget may cut it shorter)."""


GPU = Sizes(
    sigreg=[(512, 512, 512), (2048, 256, 1024), (8192, 128, 256), (8192, 2048, 1024)],
    repeats=10,
    vit_l={"scaling": {"batch_size": 64}},
    gigantic={"scaling": {"batch_size": 16, "compile": False}},
    imagenette={},  # the recipe as it is: 256 images of 4 × 128 px views
    views_batch=64,
    stream_steps=20,
    timeouts={
        "environment": 60,
        "sigreg": 90,
        "vit_l": 90,
        "imagenette_vits": 90,
        "gigantic_fsdp": 150,
        "device_views": 60,
        "vit_l_compiled": 240,
        "data_stream": 120,
        "nccl_pair": 90,
    },
)
_TOY_MODEL = {
    "name": "vit_tiny_patch16_224",
    "projector_hidden": 64,
    "projector_dim": 32,
    # Two blocks, with the recipes' per-block drop path: each block compiles a graph of its own.
    "model_args": {"depth": 2, "drop_path_rate": 0.1},
}
_TOY_VIEWS = {"global_size": 32, "local_size": 16, "local_views": 2}
DRY = Sizes(
    sigreg=[(64, 16, 32), (256, 64, 64)],
    repeats=2,
    vit_l={
        "model": _TOY_MODEL,
        "views": _TOY_VIEWS,
        "loss": {"num_slices": 64},
        "scaling": {"batch_size": 4},
    },
    gigantic={
        "model": {**_TOY_MODEL, "meta_init": True},
        "views": _TOY_VIEWS,
        "loss": {"num_slices": 64},
        "scaling": {"batch_size": 4, "compile": False},
    },
    imagenette={
        "model": _TOY_MODEL,
        "views": {"global_size": 32},  # the recipe's 4 global views, no local ones, smaller
        "loss": {"num_slices": 64},
        "scaling": {"batch_size": 4},
    },
    views_batch=4,
    stream_steps=3,
    timeouts=dict.fromkeys(GPU.timeouts, 240),
)


# ----------------------------------------------------------------------------- the checks


def check_environment(sizes: Sizes, device: torch.device) -> tuple[dict, str]:
    """Versions, the device, and the peak FLOP/s MFU is computed against."""
    import timm

    try:
        import ray

        ray_version: str | None = ray.__version__
    except ImportError:
        ray_version = None
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ray": ray_version,
        "cuda": torch.version.cuda,
        "nccl": None,
        "device": "cpu",
        "peak_bf16_tflops": peak_tflops(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        nccl = torch.cuda.nccl.version()  # a tuple, or an int on older releases
        out.update(
            nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            gpus=torch.cuda.device_count(),
        )
    peak = out["peak_bf16_tflops"]
    summary = (
        f"{out['device']}, torch {out['torch']}, CUDA {out['cuda']}, nccl {out['nccl']}, "
        f"timm {out['timm']}, Ray {ray_version or 'absent'}; peak bf16 "
        + (f"{peak:g} TFLOP/s" if peak else "unknown (no MFU)")
    )
    return out, summary


def check_sigreg(sizes: Sizes, device: torch.device) -> tuple[dict, str]:
    """Ours against the textbook SIGReg, forward+backward, at each size, measured as
    ``benchmarks/sigreg.py`` measures them: the peak memory of a first call, the median time
    of the next ones, and how far the two agree in value and gradient."""
    from sigreg import IMPLEMENTATIONS, check_agreement, run_case

    # cuBLAS takes its workspace from the caching allocator at the first matmul: not SIGReg's.
    torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)
    cases = []
    for n, d, slices in sizes.sigreg:
        case: dict[str, Any] = {"n": n, "d": d, "slices": slices}
        case.update(check_agreement(n, d, slices, device.type))
        for impl in IMPLEMENTATIONS:
            timed = run_case(impl, n, d, slices, device.type, sizes.repeats)
            case[f"{impl}_ms"], case[f"{impl}_mib"] = timed["median_ms"], timed["peak_mib"]
        case["speedup"] = case["textbook_ms"] / case["lejepa_ray_ms"]
        cases.append(case)
    worst = max(max(c["loss_rel_diff"], c["grad_rel_diff"]) for c in cases)
    last = cases[-1]
    summary = (
        f"({last['n']}, {last['d']}, {last['slices']}): ours {last['lejepa_ray_ms']:.2f} ms, "
        f"textbook {last['textbook_ms']:.2f} ms ({last['speedup']:.1f}x), "
        f"{last['lejepa_ray_mib']:.0f} against {last['textbook_mib']:.0f} MiB; agree within "
        f"{worst:.1e}"
    )
    if worst > 1e-3:
        raise AssertionError(f"ours and the textbook SIGReg disagree by {worst:.2e}: {cases}")
    return {"cases": cases, "worst_rel_diff": worst}, summary


def check_vit_l(sizes: Sizes, device: torch.device, compile: bool = False) -> tuple[dict, str]:
    """Steps of the ViT-L recipe on one device, without or with torch.compile (and then how
    many graphs it compiled: per-block drop-path rates give each block its own)."""
    cfg = _recipe("imagenet1k_vit_large.yaml", sizes.vit_l, device, compile=compile)
    out, summary = _steps(cfg, device, sizes)
    if compile:
        out["compiled_graphs"] = compiled_graphs()
        summary += f", {out['compiled_graphs']} graphs compiled"
    return out, summary


def check_vit_l_compiled(sizes: Sizes, device: torch.device) -> tuple[dict, str]:
    return check_vit_l(sizes, device, compile=True)


def check_imagenette_vits(sizes: Sizes, device: torch.device) -> tuple[dict, str]:
    """Steps of the Imagenette ViT-S/8 recipe on one device (uncompiled, as it ships)."""
    cfg = _recipe("imagenette_vit_small.yaml", sizes.imagenette, device)
    return _steps(cfg, device, sizes)


def check_gigantic_fsdp(sizes: Sizes, device: torch.device) -> tuple[dict, str]:
    """The ViT-gigantic recipe under FSDP2 on a world of one."""
    from lejepa_ray.objective.loss import lejepa_loss
    from lejepa_ray.objective.sigreg import sigreg

    cfg = _recipe("imagenet1k_vit_gigantic.yaml", sizes.gigantic, device)
    _init_group(device, rank=0, world=1)
    try:
        out, summary = _steps(cfg, device, sizes)
    finally:
        dist.destroy_process_group()
    # SIGReg, and the whole loss, of this batch's embeddings alone: their share of a step.
    v = cfg.data.views
    z = torch.randn(
        v.global_views + v.local_views,
        cfg.scaling.batch_size,
        cfg.model.projector_dim,
        device=device,
        requires_grad=True,
    )

    def loss_step() -> None:
        lejepa_loss(z[: v.global_views], z, 0, num_slices=cfg.loss.num_slices).total.backward()
        z.grad = None

    def sigreg_step() -> None:
        sigreg(z, 0, cfg.loss.num_slices).backward()
        z.grad = None

    for name, fn in (("loss", loss_step), ("sigreg", sigreg_step)):
        out[f"{name}_ms"] = _median_ms(fn, device, sizes.repeats)
        out[f"{name}_share"] = out[f"{name}_ms"] / (1e3 * out["step_s"])
    summary += (
        f"; SIGReg is {out['sigreg_share']:.1%} of a step (the whole loss {out['loss_share']:.1%})"
    )
    return out, summary


def check_device_views(sizes: Sizes, device: torch.device) -> tuple[dict, str]:
    """``data.augment_on=device``: the photometric ops of a batch of views on the device."""
    from views import generated_jpegs

    from lejepa_ray.data.device_views import augment_batch
    from lejepa_ray.data.views import ViewMaker

    vc = ViewConfig(**sizes.vit_l.get("views", {}))
    made = ViewMaker(vc, photometric=False).batch(
        generated_jpegs(sizes.views_batch, 320, 240), [str(i) for i in range(sizes.views_batch)], 0
    )
    batch = {
        "global": torch.from_numpy(made.global_views).to(device),
        "local": torch.from_numpy(made.local_views).to(device),
        "global_params": torch.from_numpy(made.global_params).to(device),
        "local_params": torch.from_numpy(made.local_params).to(device),
    }
    ms = _median_ms(lambda: augment_batch(batch, vc), device, sizes.repeats)
    per_batch = sizes.views_batch * (vc.global_views + vc.local_views)
    out = {"batch": sizes.views_batch, "ms_per_batch": ms, "views_per_s": per_batch / ms * 1e3}
    return out, f"{out['views_per_s']:,.0f} views/s ({sizes.views_batch} samples in {ms:.1f} ms)"


def check_data_stream(sizes: Sizes, device: torch.device) -> tuple[dict, str] | None:
    """The ViT-L step fed by Ray Data (generated images, CPU views); None without Ray."""
    try:
        import ray
    except ImportError:
        return None
    from lejepa_ray.data.stream import build_view_stream, data_node_resources

    cfg = _recipe("imagenet1k_vit_large.yaml", sizes.vit_l, device)
    warmup = 3
    steps = warmup + sizes.stream_steps
    cfg.data.num_samples = cfg.scaling.batch_size * (steps + 1)
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        resources=data_node_resources(cfg.data) or None,  # the recipe's views run on this node
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        stream = build_view_stream(cfg.data)
        trainer = Trainer(cfg, resolve_backbone(cfg), device)
        batches = stream.dataset.iter_torch_batches(
            batch_size=cfg.scaling.batch_size, device=device, drop_last=True, prefetch_batches=4
        )
        it, waited, start = iter(batches), 0.0, 0.0
        for step in range(steps):
            if step == warmup:
                _sync(device)
                waited, start = 0.0, time.perf_counter()
            t = time.perf_counter()
            batch = next(it)
            waited += time.perf_counter() - t
            trainer.train_step([batch])
        _sync(device)
        elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
    out = {
        "steps": sizes.stream_steps,
        "cpus": os.cpu_count(),
        "images_per_s": sizes.stream_steps * cfg.scaling.batch_size / elapsed,
        "data_wait_fraction": waited / elapsed,
    }
    summary = (
        f"{out['images_per_s']:.1f} images/s fed by Ray Data on {out['cpus']} CPUs, "
        f"{out['data_wait_fraction']:.0%} of the time waiting for data"
    )
    return out, summary


def check_nccl_pair(sizes: Sizes, device: torch.device) -> tuple[dict, str] | None:
    """Two ranks: SIGReg exact over unequal shards, a DDP and an FSDP2 step on 3 + 2 images
    (an uneven split of the global batch). None with fewer than 2 GPUs (the dry run uses two
    CPU processes and gloo)."""
    import torch.multiprocessing as mp

    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_pair_worker, args=(device.type, _free_port(), tmp), nprocs=2, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
    out = {
        "sigreg_rel_diff": max(r["sigreg_rel_diff"] for r in ranks),
        "sigreg_grad_rel_diff": max(r["sigreg_grad_rel_diff"] for r in ranks),
        **{f"{k}_loss": [r[f"{k}_loss"] for r in ranks] for k in ("ddp", "fsdp")},
    }
    for k in ("ddp", "fsdp"):
        a, b = out[f"{k}_loss"]
        if not abs(a - b) <= 1e-4 * abs(a):  # the global loss, the same on both ranks
            raise AssertionError(f"{k}: the ranks' losses differ: {a} and {b}")
    if max(out["sigreg_rel_diff"], out["sigreg_grad_rel_diff"]) > 1e-4:
        raise AssertionError(f"SIGReg across ranks is not the one-process value: {out}")
    summary = (
        f"SIGReg over unequal shards within {out['sigreg_rel_diff']:.1e} (gradient "
        f"{out['sigreg_grad_rel_diff']:.1e}); DDP and FSDP2 steps agree across ranks"
    )
    return out, summary


CHECKS: dict[str, Callable[[Sizes, torch.device], tuple[dict, str] | None]] = {
    "environment": check_environment,
    "sigreg": check_sigreg,
    "vit_l": check_vit_l,
    "imagenette_vits": check_imagenette_vits,
    "gigantic_fsdp": check_gigantic_fsdp,
    "device_views": check_device_views,
    "vit_l_compiled": check_vit_l_compiled,
    "data_stream": check_data_stream,
    "nccl_pair": check_nccl_pair,
}
"""In the order they run: the most wanted figures first, in case the budget runs out."""

SKIP_REASONS = {
    "data_stream": "Ray is not installed here",
    "nccl_pair": "needs 2 GPUs",
}


# ----------------------------------------------------------------------------- helpers


def _recipe(
    name: str,
    overrides: dict[str, dict[str, Any]],
    device: torch.device,
    *,
    compile: bool = False,
    workers: int | list[int] = 1,
) -> PretrainConfig:
    """A recipe of ``jobs/configs`` for ``workers`` workers on ``device``, with ``overrides``
    by section (``views`` for ``data.views``). Read with PyYAML and built as the config
    dataclasses, so that no OmegaConf is needed."""
    raw = yaml.safe_load((ROOT / "jobs" / "configs" / name).read_text())

    def section(key: str) -> dict[str, Any]:
        return {**raw.get(key, {}), **overrides.get(key, {})}

    scaling = {**section("scaling"), "num_workers": workers, "use_gpu": device.type == "cuda"}
    if device.type != "cuda":
        scaling["precision"] = "fp32"  # bf16 on a CPU is slow and not what a GPU would run
    if compile:
        scaling["compile"] = True
    data = {k: v for k, v in raw.get("data", {}).items() if k not in ("path", "source", "views")}
    views = {**raw.get("data", {}).get("views", {}), **overrides.get("views", {})}
    views = {k: tuple(v) if isinstance(v, list) else v for k, v in views.items()}
    return PretrainConfig(
        name="gpu-check",
        model=ModelConfig(**section("model")),
        data=DataConfig(**data, views=ViewConfig(**views)),
        loss=LossConfig(**section("loss")),
        optim=OptimConfig(**{**section("optim"), "warmup_steps": 0}),
        scaling=ScalingConfig(**scaling),
    )


def _steps(cfg: PretrainConfig, device: torch.device, sizes: Sizes) -> tuple[dict, str]:
    """Build ``cfg``'s trainer and time its steps on random images already on the device."""
    start = time.perf_counter()
    trainer = Trainer(cfg, resolve_backbone(cfg), device)
    _sync(device)
    build_s = time.perf_counter() - start
    v, b = cfg.data.views, cfg.scaling.batch_size
    batch = _random_views(v, b, device, seed=0)
    _memory_reset(device)  # the peak counts the model and optimizer state too
    start = time.perf_counter()
    first = trainer.train_step([batch])
    _sync(device)
    first_s = time.perf_counter() - start
    trainer.train_step([batch])  # a second warm-up: allocator and autotuning settle
    _sync(device)
    start = time.perf_counter()
    results = [trainer.train_step([batch]) for _ in range(sizes.repeats)]
    _sync(device)
    step_s = (time.perf_counter() - start) / sizes.repeats
    if not all(r.finite for r in [first, *results]):
        raise AssertionError("a step's loss or gradient was not finite")
    images_per_s = b / step_s
    flops = train_flops_per_image(trainer.spec, cfg.model, v)
    peak = peak_tflops(device)
    mfu = flops * images_per_s / (peak * 1e12) if peak else None
    peak_gb = _peak_gb(device)
    s = cfg.scaling
    estimate = memory_gb(Geometry.of(cfg), 1, b, fsdp=s.strategy == "fsdp")
    out = {
        "model": cfg.model.name,
        "batch": b,
        "strategy": cfg.scaling.strategy,
        "precision": str(compute_dtype(cfg.scaling, device)).removeprefix("torch."),
        "compile": cfg.scaling.compile,
        "activation_checkpointing": cfg.scaling.activation_checkpointing,
        "build_s": build_s,
        "first_step_s": first_s,
        "step_s": step_s,
        "images_per_s": images_per_s,
        "tflop_per_image": flops / 1e12,
        "mfu": mfu,
        "peak_gb": peak_gb,
        # benchmarks/scale_plan.py's figure for this model, batch and strategy on one GPU
        "estimated_gb": estimate["total_checkpointed" if s.activation_checkpointing else "total"],
        "loss": float(results[-1].loss.total),
    }
    summary = (
        f"{cfg.model.name}, {b} images: {step_s * 1e3:.0f} ms/step, {images_per_s:,.1f} "
        f"images/s, first step {first_s:.1f} s"
        + (f", MFU {mfu:.1%}" if mfu is not None else "")
        + (
            f", peak {out['peak_gb']:.1f} GB (estimated {out['estimated_gb']:.1f})"
            if out["peak_gb"] is not None
            else ""
        )
    )
    return out, summary


def _random_views(
    v: ViewConfig, batch: int, device: torch.device, seed: int
) -> dict[str, torch.Tensor]:
    """Random uint8 views of ``batch`` images on ``device``, as the stream gives them:
    ``global`` (B, V_g, 3, S_g, S_g) and, when V_l > 0, ``local`` (B, V_l, 3, S_l, S_l)."""
    gen = torch.Generator().manual_seed(seed)

    def views(count: int, size: int) -> torch.Tensor:
        shape = (batch, count, 3, size, size)
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)

    out = {"global": views(v.global_views, v.global_size)}
    if v.local_views:
        out["local"] = views(v.local_views, v.local_size)
    return out


def _pair_worker(rank: int, kind: str, port: int, out_dir: str) -> None:
    """One of two ranks of ``check_nccl_pair``; writes ``rank<r>.json`` to ``out_dir``."""
    from lejepa_ray.objective.sigreg import sigreg

    device = torch.device(f"cuda:{rank}") if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    # The one-process reference, before the group exists, on the same kind of device (SIGReg's
    # directions are drawn by that device's generator): 300 samples, split 160 / 140.
    z = torch.randn(300, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = z.to(device).clone().requires_grad_(True)
    reference = sigreg(whole, 3, 128)
    reference.backward()
    lo, hi = (0, 160) if rank == 0 else (160, 300)
    _init_group(device, rank, world=2, port=port)
    try:
        mine = z[lo:hi].to(device).clone().requires_grad_(True)
        value = sigreg(mine, 3, 128)
        value.backward()
        # Each rank's per-sample gradient is world × the one-process one (sigreg's docstring).
        grad = mine.grad / 2
        out = {
            "sigreg_rel_diff": float((value - reference).abs() / reference.abs()),
            "sigreg_grad_rel_diff": float(
                (grad - whole.grad[lo:hi]).abs().max() / whole.grad.abs().max()
            ),
        }
        for strategy in ("ddp", "fsdp"):  # a toy model: this is about the collectives
            # A global batch of 5 (1 × up to 5 workers) on 2: 3 and 2 images, loss weighted.
            overrides = {**DRY.vit_l, "scaling": {"batch_size": 1, "strategy": strategy}}
            cfg = _recipe("imagenet1k_vit_large.yaml", overrides, device, workers=[2, 5])
            share = batch_share(cfg.scaling.global_batch, rank, 2)
            trainer = Trainer(cfg, resolve_backbone(cfg), device, batch_share=share)
            b = batch_split(cfg.scaling.global_batch, 2)[rank]
            batch = _random_views(cfg.data.views, b, device, seed=rank)  # each rank its own
            result = trainer.train_step([batch])
            if not result.finite:
                raise AssertionError(f"{strategy}: a non-finite loss or gradient")
            out[f"{strategy}_loss"] = float(result.loss.sigreg)  # global: equal on both ranks
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _init_group(device: torch.device, rank: int, world: int, port: int | None = None) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    port = port or _free_port()
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_reset(device: torch.device) -> None:
    """Start counting peak memory from what is allocated now."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    """Peak allocation since :func:`_memory_reset`, GB; None on a CPU."""
    if device.type != "cuda":
        return None
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 1e9


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` timed calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ----------------------------------------------------------------------------- driver


def run_one(name: str, dry_run: bool, fail: bool = False) -> dict:
    """Run check ``name`` in this process: its figures and one-line summary, or why it was
    skipped. ``fail``: raise instead (to test that one failure spares the other checks)."""
    if fail:
        raise RuntimeError(f"{name} was told to fail (--fail-check)")
    sizes = DRY if dry_run else GPU
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible; use --dry-run on a CPU")
    device = torch.device("cpu") if dry_run else torch.device("cuda:0")
    torch.manual_seed(0)
    if dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    got = CHECKS[name](sizes, device)
    if got is None:
        return {"status": "skipped", "summary": SKIP_REASONS[name]}
    figures, summary = got
    return {"status": "ok", "summary": summary, **figures}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--only", help=f"comma-separated checks, of: {', '.join(CHECKS)}")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="seconds for all checks; those that would start later are skipped",
    )
    parser.add_argument(
        "--log", type=Path, help="append every check's whole output (tracebacks, warnings) here"
    )
    parser.add_argument("--check", help=argparse.SUPPRESS)  # one check, in this process
    parser.add_argument("--fail-check", help=argparse.SUPPRESS)  # make this one fail (tests)
    args = parser.parse_args(argv)
    if args.check:
        try:
            result = run_one(args.check, args.dry_run, fail=args.check == args.fail_check)
        except BaseException as e:  # reported by the parent; the traceback is on stderr
            traceback.print_exc()
            result = {"status": "failed", "summary": f"{type(e).__name__}: {e}"}
        print(RESULT + json.dumps(result), flush=True)
        return result
    names = list(CHECKS) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    sizes = DRY if args.dry_run else GPU
    deadline = time.monotonic() + args.budget_s
    print(
        f"gpu_check: {len(names)} checks, {'dry run on the CPU' if args.dry_run else 'GPU'}, "
        f"budget {args.budget_s:.0f} s",
        flush=True,
    )
    results = {}
    for name in names:
        left = deadline - time.monotonic()
        if left < 5:
            results[name] = {"status": "skipped", "summary": "the time budget ran out"}
        else:
            timeout = min(sizes.timeouts[name], left)
            results[name] = _in_subprocess(name, args.dry_run, timeout, args.fail_check, args.log)
        r = results[name]
        line = f"{r['status']:>7}  {name:<15} {r.get('seconds', 0):6.1f} s  {r['summary']}"
        print(line, flush=True)
    failed = [n for n, r in results.items() if r["status"] == "failed"]
    out = {"dry_run": args.dry_run, "failed": failed, "checks": results}
    print(json.dumps(_rounded(out)), flush=True)
    return out


def _in_subprocess(
    name: str, dry_run: bool, timeout: float, fail: str | None, log: Path | None
) -> dict:
    """Run one check in a fresh process; its result, or why it has none. Its whole output is
    appended to ``log`` when given."""
    cmd = [sys.executable, __file__, "--check", name] + (["--dry-run"] if dry_run else [])
    cmd += ["--fail-check", fail] if fail else []
    start = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:  # what it printed before it was killed
        stdout, stderr, code, timed_out = _text(e.stdout), _text(e.stderr), None, True
    seconds = time.monotonic() - start
    if log is not None:
        with log.open("a") as f:
            f.write(f"===== {name}: exit code {code}, {seconds:.1f} s\n{stdout}{stderr}\n")
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    if not lines:
        why = f"did not finish in {timeout:.0f} s" if timed_out else f"exit code {code}"
        tail = stderr.strip().splitlines()[-3:]
        return {"status": "failed", "summary": " | ".join([why, *tail]), "seconds": seconds}
    result = json.loads(lines[-1].removeprefix(RESULT))
    if timed_out:  # its figures are in; it hung on the way out (a process group's teardown)
        result["summary"] += f" (its process did not exit within {timeout:.0f} s)"
    if result["status"] == "failed":  # the end of its traceback, for the JSON record
        result["traceback"] = stderr.strip().splitlines()[-20:]
    return {**result, "seconds": seconds}


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _rounded(value: Any) -> Any:
    """``value`` with every float to 4 significant digits, for a readable JSON line."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)  # a --check process: its result line says
