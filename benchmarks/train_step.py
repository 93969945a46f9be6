"""Steady-state step time of the same LeJEPA loop under Ray Train and under plain torchrun.

Both sides run ``lejepa_ray.train.trainer.Trainer.train_step`` on 2 workers (gloo on CPU, nccl
on GPU) with the same model, batch and in-memory uint8 views (no data pipeline, so only the training
runtimes are compared). Each side times ``--steps`` steps after ``--warmup`` steps, and the
sides alternate for ``--rounds`` rounds (never at the same time), so that drift in a shared
machine's load hits both. Reported: the median and the minimum step time of rank 0 over all
rounds, and the overhead ratio Ray Train ÷ torchrun of each (target <= 1.10; the median is the
headline, the minimum shows the cost with the least interference). Last line: one JSON object.

    python benchmarks/train_step.py [--model resnet18] [--size 32] [--batch-size 64] [--rounds 2]

The defaults are the CPU quickstart's model, views and batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS = 2


def _config(args: argparse.Namespace):
    from lejepa_ray.config import QUICKSTART, load_config

    # The quickstart's projector and loss; the command line sets model, views and batch.
    return load_config(
        QUICKSTART,
        [
            f"model.name={args.model}",
            f"data.views.global_size={args.size}",
            f"data.views.local_size={args.size // 2}",
            f"data.views.local_views={args.local_views}",
            f"optim.steps={args.warmup + args.steps}",
            "optim.warmup_steps=0",
            f"scaling.batch_size={args.batch_size}",
            f"scaling.num_workers={WORKERS}",
            f"scaling.use_gpu={args.gpu}",
        ],
    )


def time_steps(cfg, device, rank: int, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed ``train_step`` (after ``warmup`` untimed ones) on this rank."""
    import torch

    from lejepa_ray.model.encoder import resolve_backbone
    from lejepa_ray.train.trainer import Trainer

    trainer = Trainer(cfg, resolve_backbone(cfg), device)
    v = cfg.data.views
    gen = torch.Generator().manual_seed(rank)
    batch = {
        "global": torch.randint(
            0,
            256,
            (cfg.scaling.batch_size, v.global_views, 3, v.global_size, v.global_size),
            generator=gen,
            dtype=torch.uint8,
        ).to(device),
        "local": torch.randint(
            0,
            256,
            (cfg.scaling.batch_size, v.local_views, 3, v.local_size, v.local_size),
            generator=gen,
            dtype=torch.uint8,
        ).to(device),
    }
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        trainer.train_step([batch])
        float(trainer.encoder.projector[0].weight.detach().sum())  # wait for the device
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _torchrun_worker(args: argparse.Namespace) -> None:
    """Body of one torchrun process."""
    import torch
    import torch.distributed as dist

    gpu = args.gpu
    dist.init_process_group("nccl" if gpu else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    times = time_steps(_config(args), device, rank, args.warmup, args.steps)
    if rank == 0:
        Path(args.out).write_text(json.dumps(times))
    dist.destroy_process_group()


def _ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    args = config["args"]
    torch.set_num_threads(args.threads)
    rank = ray.train.get_context().get_world_rank()
    times = time_steps(_config(args), ray.train.torch.get_device(), rank, args.warmup, args.steps)
    if rank == 0:
        Path(args.out).write_text(json.dumps(times))


def run_torchrun(args: argparse.Namespace) -> list[float]:
    out = tempfile.mktemp(suffix=".json")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={WORKERS}",
        "--master-port=29533",
        __file__,
        "--torchrun-worker",
        "--out",
        out,
        *_passthrough(args),
    ]
    # torchrun sets OMP_NUM_THREADS=1 for several processes; set it the same on both sides.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(out).read_text())


def run_ray(args: argparse.Namespace) -> list[float]:
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from lejepa_ray.launch.runtime import connect

    connect(train_cpus=WORKERS, log_to_driver=False)  # kept up between rounds
    args.out = tempfile.mktemp(suffix=".json")
    TorchTrainer(
        _ray_worker,
        train_loop_config={"args": args},
        scaling_config=ScalingConfig(
            num_workers=WORKERS, use_gpu=args.gpu, resources_per_worker={"CPU": args.threads}
        ),
    ).fit()
    return json.loads(Path(args.out).read_text())


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = [
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--batch-size",
        str(args.batch_size),
        "--local-views",
        str(args.local_views),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    return out + (["--gpu"] if args.gpu else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32, help="global view side (local: half)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per worker")
    parser.add_argument("--local-views", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl")
    parser.add_argument("--torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torchrun_worker:
        _torchrun_worker(args)
        return
    print(
        f"{args.model}, {WORKERS} workers, batch {args.batch_size}/worker, 2×{args.size}px + "
        f"{args.local_views}×{args.size // 2}px views, {args.steps} timed steps after "
        f"{args.warmup}",
        flush=True,
    )
    plain: list[float] = []
    ray_times: list[float] = []
    for r in range(args.rounds):
        plain += run_torchrun(args)
        ray_times += run_ray(args)
        print(
            f"round {r + 1}/{args.rounds}: torchrun median "
            f"{statistics.median(plain[-args.steps :]) * 1e3:.1f} ms, Ray Train median "
            f"{statistics.median(ray_times[-args.steps :]) * 1e3:.1f} ms",
            flush=True,
        )
    result = {
        "torchrun_step_s": statistics.median(plain),
        "ray_train_step_s": statistics.median(ray_times),
        "torchrun_min_step_s": min(plain),
        "ray_train_min_step_s": min(ray_times),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    result["overhead_ratio"] = result["ray_train_step_s"] / result["torchrun_step_s"]
    result["overhead_ratio_min"] = result["ray_train_min_step_s"] / result["torchrun_min_step_s"]
    for side, times in (("torchrun ", plain), ("Ray Train", ray_times)):
        print(
            f"{side}: median step {statistics.median(times) * 1e3:.1f} ms "
            f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, {len(times)} steps)"
        )
    print(
        f"overhead ratio Ray Train / torchrun: median {result['overhead_ratio']:.3f}, "
        f"min {result['overhead_ratio_min']:.3f} (target <= 1.10)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
